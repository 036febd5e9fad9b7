"""Shared fixtures. Keep this file small: each area's fixtures live beside its tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint in the exact hub layout at a tiny shape (vocab 1024), written once per run."""
    from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "model", tiny_config_dict(), seed=0, shards=3)
