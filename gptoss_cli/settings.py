"""Where gptoss keeps its files and how it reaches the Hugging Face Hub.

Everything is read from the environment when asked, not at import, so a flag, a test or a long-lived process sees
the current value. Environment variables:

- ``GPTOSS_MODELS``: the model store (default: the user cache dir from platformdirs, e.g.
  ``~/.cache/gptoss/models`` on Linux, ``%LOCALAPPDATA%\\gptoss\\Cache\\models`` on Windows).
- ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HOME`` / ``HF_HUB_CACHE``: as for every Hugging Face tool.
- ``GPTOSS_CPU_EXPERTS``: the CPU's part of experts kept in RAM (engine/offload.py): unset or "auto" measures it at
  load, "0"/"off" leaves them to the GPU, a fraction in [0, 1] forces one.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

MODELS_ENV = "GPTOSS_MODELS"
CPU_EXPERTS_ENV = "GPTOSS_CPU_EXPERTS"
_TRUE = {"1", "ON", "YES", "TRUE"}


def cache_dir() -> Path:
    """gptoss's user cache dir (platformdirs): the default home of the model store and of measured speeds."""
    return platformdirs.user_cache_path("gptoss", appauthor=False)


def models_dir(override: str | Path | None = None) -> Path:
    """The model store: the ``--models-dir`` flag, else ``$GPTOSS_MODELS``, else the user cache dir."""
    chosen = override or os.environ.get(MODELS_ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    return cache_dir() / "models"


def hf_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hf_hub_cache() -> Path:
    """The standard Hugging Face hub cache, where models pulled by other tools may already be."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (now, or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or constants.is_offline_mode()


def cpu_experts_setting() -> tuple[float | None, bool]:
    """``GPTOSS_CPU_EXPERTS`` as (a fraction in [0, 1], or None for "auto": measured at load; whether it was set).
    Unset is "auto" for the in-graph share of in-place decode and 0 for the staging path's CPU experts; "0" /
    "off" turns both off; anything unreadable counts as "auto"."""
    raw = os.environ.get(CPU_EXPERTS_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None, raw == "auto"
    if raw in ("off", "no", "false"):
        return 0.0, True
    try:
        return min(1.0, max(0.0, float(raw))), True
    except ValueError:
        return None, True
