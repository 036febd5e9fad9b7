"""The README's Linux install, run verbatim: the fenced bash block right after the ``<!-- install-linux -->``
marker runs in a copy of the tracked files (a clean checkout: nothing untracked, nothing built), from a shell
without this test's virtual environment, and must leave a working ``gptoss`` inside that copy.

torch is pinned to 2.13.0 for the run (a pre-seeded .venv and a pip constraint), so whatever the block says
about torch, pip takes the CPU wheel this machine has on disk instead of downloading a multi-GB CUDA build."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- install-linux -->"
TORCH_PIN = "torch==2.13.0"


def install_block(readme: str) -> str:
    """The first fenced code block after the marker."""
    if MARKER not in readme:
        raise ValueError(f"README.md has no {MARKER} marker before its Linux install commands")
    match = re.search(r"^```[a-z]*\n(.*?)^```", readme.split(MARKER, 1)[1], re.S | re.M)
    if not match:
        raise ValueError(f"no fenced code block after {MARKER}")
    return match.group(1)


def test_the_block_after_the_marker_is_what_runs() -> None:
    readme = (f"## Install\n\n{MARKER}\n```bash\npython3 -m venv .venv && . .venv/bin/activate\npip install -e .\n"
              "```\n\n```bash\ngptoss chat\n```\n")
    assert install_block(readme) == "python3 -m venv .venv && . .venv/bin/activate\npip install -e .\n"
    with pytest.raises(ValueError, match="marker"):
        install_block("## Install\n```bash\npip install .\n```\n")


def clean_checkout(dest: Path) -> Path:
    """The tracked files as they are in the working tree, and nothing else."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def fresh_shell_env(tmp: Path) -> dict[str, str]:
    """This environment minus the test's own virtual environment, with torch pinned and a private model folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if sys.prefix != sys.base_prefix:
        own_bin = str(Path(sys.prefix) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_bin)
    constraints = tmp / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    return env | {"PIP_CONSTRAINT": str(constraints), "GPTOSS_MODELS": str(tmp / "models"),
                  "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.skipif(os.environ.get("GPTOSS_INSTALL_TEST") != "1",
                    reason="runs the README's Linux install in a fresh venv (1-2 minutes); set GPTOSS_INSTALL_TEST=1 "
                           "(.ci/run does)")
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a git checkout to know which files are tracked")
def test_the_readme_linux_install_works_verbatim(tmp_path: Path) -> None:
    block = install_block((ROOT / "README.md").read_text(encoding="utf-8"))
    checkout = clean_checkout(tmp_path / "gptoss")
    env = fresh_shell_env(tmp_path)
    seed = subprocess.run(f"python3 -m venv .venv && .venv/bin/python -m pip install -q {TORCH_PIN}", shell=True,
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert seed.returncode == 0, seed.stdout + seed.stderr
    script = (f"set -eu\n{block}\n"
              "echo \"GPTOSS_AT=$(command -v gptoss)\"\n"
              "gptoss --help\n"
              "gptoss doctor --json > doctor.json || test $? -eq 1\n")
    done = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    log = f"--- block ---\n{block}\n--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, log
    where = re.search(r"^GPTOSS_AT=(.*)$", done.stdout, re.M)
    assert where and Path(where.group(1)).resolve().is_relative_to(checkout.resolve()), \
        f"gptoss must come from a venv inside the checkout\n{log}"
    assert "doctor" in done.stdout and "pull" in done.stdout, log
    report = json.loads((checkout / "doctor.json").read_text())
    assert report["checks"] and report["facts"]["torch"].startswith("2.13.0")
