"""install.sh without a download: it parses, refuses options that do not go together, and --uninstall removes
exactly what an install leaves (venv, link) while keeping the models unless asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "install.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "GPTOSS_MODELS")}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env | {"HOME": str(home)}, capture_output=True,
                          text=True, timeout=60)


def test_it_parses_and_explains_itself(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = run(tmp_path, "--help")
    assert done.returncode == 0 and "--uninstall [--remove-models]" in done.stdout
    assert run(tmp_path, "--remove-models").returncode == 2
    assert run(tmp_path, "--bogus").returncode == 2


def test_uninstall_keeps_models_unless_asked(tmp_path: Path) -> None:
    venv = tmp_path / ".local/share/gptoss/venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/gptoss").write_text("#!/bin/sh\n")
    link = tmp_path / ".local/bin/gptoss"
    link.parent.mkdir(parents=True)
    link.symlink_to(venv / "bin/gptoss")
    models = tmp_path / ".cache/gptoss/models"
    (models / "gpt-oss-20b").mkdir(parents=True)

    done = run(tmp_path, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not venv.exists() and not link.is_symlink() and not (tmp_path / ".local/share/gptoss").exists()
    assert (models / "gpt-oss-20b").is_dir() and "kept the models" in done.stdout

    assert run(tmp_path, "--uninstall", "--remove-models").returncode == 0
    assert not models.exists()


def test_uninstall_leaves_a_gptoss_it_did_not_install(tmp_path: Path) -> None:
    other = tmp_path / ".local/bin/gptoss"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\n# installed some other way\n")
    assert run(tmp_path, "--uninstall").returncode == 0
    assert other.is_file()
