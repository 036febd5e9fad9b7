"""Shared fixtures. Keep this file small: each area's fixtures live beside its tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels (kernels/) run under Triton's CPU interpreter. Triton reads this variable when a
# kernel is defined, so it is set here, before any test module imports gptoss_kernels; nothing else on a CPU-only
# machine runs Triton, so the rest of the suite is unaffected.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint in the exact hub layout at a tiny shape (vocab 1024), written once per run."""
    from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "model", tiny_config_dict(), seed=0, shards=3)


@pytest.fixture(autouse=True)
def _own_speeds_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured bandwidths (gptoss_cli/speeds.py) go to a file of each test's own, never the user's cache: a
    plan's estimate must not depend on what this machine measured before."""
    monkeypatch.setenv("GPTOSS_SPEEDS", str(tmp_path / "speeds.json"))
