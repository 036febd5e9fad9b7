"""`gptoss plan` through the real entry point: JSON for scripts, a table for people, refusals exit 1."""

from __future__ import annotations

import re
import sys

import pytest

from gptoss_cli.cli import main
from gptoss_cli.plan import Plan


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["gptoss", "plan", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_json_is_a_plan_the_engine_can_read(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "gpt-oss-20b", "--vram", "16GB", "--ram", "32GB", "--json")
    assert code == 0
    plan = Plan.from_json(out)
    assert plan.fits and plan.model == "gpt-oss-20b" and plan.device == "cuda:0"
    assert plan.experts_on_gpu == tuple(range(24)) and plan.context_length >= 32768


def test_options_reach_the_planner(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "--vram", "12GB", "--ram", "32GB", "--context", "65536",
                       "--no-quantize", "--headroom", "2GB", "--json")
    plan = Plan.from_json(out)
    assert code == 0 and plan.context_length == plan.requested_context == 65536
    assert plan.attn_precision == "bf16" and plan.headroom_bytes == 2 << 30
    assert plan.gpu_bytes <= (12 - 2) << 30


def test_the_table_shows_where_each_part_goes(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "gpt-oss-20b", "--vram", "12GB", "--ram", "32GB")
    assert code == 0
    n = int(re.search(r"--n-cpu-moe (\d+)", out).group(1))
    assert 1 <= n <= 6  # a 12 GB card keeps most layers' experts on the GPU
    assert re.search(rf"experts, layers {n}-23\s+│ GPU", out) and re.search(rf"experts, layers 0-{n - 1}\s+│ RAM", out)
    assert "tokens/s" in out and "expert staging" in out


def test_a_refusal_exits_1_with_the_shortfall_and_what_would_work(monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "gpt-oss-120b", "--vram", "0", "--ram", "32GB")
    assert code == 1 and out == ""
    assert "error: needs 66.7 GB of RAM+VRAM, you have 32.0 GB" in err
    assert "hint: would fit: 67 GB of available system RAM without a GPU" in err
    assert "gpt-oss-20b, which fits this machine" in err


def test_a_refusal_in_json_still_prints_the_plan_and_exits_1(monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "gpt-oss-120b", "--vram", "0", "--ram", "32GB", "--json")
    assert code == 1 and not Plan.from_json(out).fits and "needs 66.7 GB" in err


def test_an_unreadable_size_is_a_usage_error(monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "--vram", "twelve")
    assert code == 2 and "--vram" in err


def test_an_unknown_model_exits_3(monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "gpt-oss-7b", "--vram", "0", "--ram", "8GB")
    assert code == 3 and "gpt-oss-20b" in err
