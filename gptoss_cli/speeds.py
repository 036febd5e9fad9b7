"""Bandwidths this machine measured, remembered between runs, so a plan shown before any download can estimate
speed from this machine's own numbers (issue 9).

Three rates matter: the GPU's copy bandwidth (it bounds decode while every weight is on the GPU), the pinned
host->GPU rate over PCIe and the rate at which the CPU computes its share of experts kept in RAM (together they
bound decode once experts stay in RAM: the GPU reads part of each token's routed experts of those layers across the
bus while the CPU computes the rest, engine/cpu_share.py). ``gptoss bench`` measures the first two; loading a model
whose plan keeps experts in RAM measures the host->GPU rate the first time and times the CPU share every time. They are kept per GPU name in ``speeds.json`` in the user cache
directory; remembering is best effort (a read-only cache only means the next plan assumes again).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

SPEEDS_ENV = "GPTOSS_SPEEDS"


@dataclass(frozen=True)
class Measured:
    """What one GPU measured here; a rate is None until something measured it."""

    gpu_copy_gb_s: float | None = None  # device-to-device copy
    h2d_gb_s: float | None = None  # pinned host memory -> GPU
    cpu_share_gb_s: float | None = None  # packed expert bytes the CPU share's team computes per second
    date: str = ""  # when the newest of them was measured (ISO date)


def path() -> Path:
    """``$GPTOSS_SPEEDS``, else speeds.json in the user cache dir (beside the model store's default)."""
    chosen = os.environ.get(SPEEDS_ENV)
    if chosen:
        return Path(chosen).expanduser()
    from .settings import cache_dir  # here, not at import: the planner stays importable without platformdirs

    return cache_dir() / "speeds.json"


def _read() -> dict:
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(gpu_name: str | None) -> Measured | None:
    """The rates remembered for a GPU of this name, or None."""
    row = _read().get(gpu_name) if gpu_name else None
    if not isinstance(row, dict):
        return None

    def rate(key: str) -> float | None:
        value = row.get(key)
        return float(value) if isinstance(value, int | float) and value > 0 else None

    measured = Measured(rate("gpu_copy_gb_s"), rate("h2d_gb_s"), rate("cpu_share_gb_s"), str(row.get("date", "")))
    return measured if measured.gpu_copy_gb_s or measured.h2d_gb_s or measured.cpu_share_gb_s else None


def remember(gpu_name: str, gpu_copy_gb_s: float | None = None, h2d_gb_s: float | None = None,
             cpu_share_gb_s: float | None = None) -> None:
    """Store newly measured rates for ``gpu_name`` (others kept); never raises for an unwritable cache. The CPU
    share's rate is the host's, kept with the GPU it feeds (one machine, one CPU)."""
    data = _read()
    row = data.get(gpu_name) if isinstance(data.get(gpu_name), dict) else {}
    for key, value in (("gpu_copy_gb_s", gpu_copy_gb_s), ("h2d_gb_s", h2d_gb_s), ("cpu_share_gb_s", cpu_share_gb_s)):
        if value:
            row[key] = round(float(value), 1)
    row["date"] = datetime.date.today().isoformat()
    data[gpu_name] = row
    target = path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(target)
    except OSError:
        pass
