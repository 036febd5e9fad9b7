"""Bandwidths measured on this machine, remembered per GPU, and the plans that use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptoss_cli import speeds
from gptoss_cli.hardware import GiB, Gpu, Hardware
from gptoss_cli.model.config import official_config
from gptoss_cli.plan import GPU_EFFICIENCY, Bandwidths, Wishes, make_plan, plan_for
from gptoss_cli.sizes import tensor_sizes

RTX = "NVIDIA GeForce RTX 4070"


def _machine(vram_gb: float, name: str = RTX) -> Hardware:
    return Hardware((Gpu(0, name, (8, 9), int(vram_gb * GiB), int(vram_gb * GiB)),), 64 * GiB, 64 * GiB, 16, "Linux")


def test_rates_are_remembered_per_gpu_and_merged() -> None:
    assert speeds.recall(RTX) is None
    speeds.remember(RTX, h2d_gb_s=24.93)
    speeds.remember("NVIDIA H200", gpu_copy_gb_s=4100.0, h2d_gb_s=55.5)
    speeds.remember(RTX, gpu_copy_gb_s=450.0)  # a later bench adds the copy rate, keeps the PCIe one
    got = speeds.recall(RTX)
    assert got is not None and (got.gpu_copy_gb_s, got.h2d_gb_s) == (450.0, 24.9) and len(got.date) == 10
    assert speeds.recall("NVIDIA H200").h2d_gb_s == 55.5
    assert speeds.recall("NVIDIA GeForce RTX 3060") is None and speeds.recall(None) is None


def test_a_damaged_or_unwritable_file_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    speeds.path().write_text("{not json", encoding="utf-8")
    assert speeds.recall(RTX) is None
    speeds.remember(RTX, h2d_gb_s=25.0)  # replaces what could not be read
    assert json.loads(speeds.path().read_text(encoding="utf-8"))[RTX]["h2d_gb_s"] == 25.0
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv(speeds.SPEEDS_ENV, str(blocker / "speeds.json"))  # its parent is a file: cannot be made
    speeds.remember(RTX, h2d_gb_s=25.0)
    assert speeds.recall(RTX) is None


def test_plan_for_estimates_from_the_rates_this_gpu_measured() -> None:
    """Before anything is measured the plan says its PCIe rate is assumed; after a bench on this GPU the estimate
    uses the measured rates (copy bandwidth discounted as a datasheet figure is) and says when they were measured.
    Another GPU's measurements are not used."""
    hw = _machine(8)
    assumed = plan_for("gpt-oss-20b", hw)
    note = next(n for n in assumed.notes if "across PCIe" in n)
    assert "assumed; `gptoss bench` measures this machine" in note
    speeds.remember(RTX, gpu_copy_gb_s=450.0, h2d_gb_s=12.0)
    speeds.remember("NVIDIA H200", gpu_copy_gb_s=4100.0, h2d_gb_s=55.0)
    measured = plan_for("gpt-oss-20b", hw)
    note = next(n for n in measured.notes if "across PCIe" in n)
    assert f"measured on this machine {speeds.recall(RTX).date}" in note and "~10 GB/s" in note
    config = official_config("gpt-oss-20b")
    explicit = make_plan(config, tensor_sizes(config), hw,
                         Wishes(bandwidths=Bandwidths(gpu_gb_s=450.0 * GPU_EFFICIENCY, pcie_gb_s=12.0)))
    assert measured.est_decode_tok_s == explicit.est_decode_tok_s < assumed.est_decode_tok_s
    assert measured.experts_on_gpu == assumed.experts_on_gpu  # rates change the estimate, not the placement
    given = plan_for("gpt-oss-20b", hw, Wishes(bandwidths=Bandwidths(pcie_gb_s=25.0, gpu_gb_s=300.0)))
    assert not any("measured on this machine" in n for n in given.notes)


def test_a_remembered_cpu_share_rate_raises_the_estimate_with_experts_in_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU share's rate, timed at a load on this machine, adds to the GPU's in-place PCIe rate for the experts
    kept in RAM; the note says which it used."""
    hw = _machine(8)
    speeds.remember(RTX, gpu_copy_gb_s=450.0, h2d_gb_s=25.0)
    gpu_only = plan_for("gpt-oss-20b", hw)
    assert any("timed at the first load; the estimate leaves it out" in n for n in gpu_only.notes)
    speeds.remember(RTX, cpu_share_gb_s=21.25)
    got = speeds.recall(RTX)
    assert got is not None and (got.h2d_gb_s, got.cpu_share_gb_s) == (25.0, 21.2)
    shared = plan_for("gpt-oss-20b", hw)
    assert any("~21 GB/s as last timed here" in n for n in shared.notes)
    assert shared.experts_on_gpu == gpu_only.experts_on_gpu and shared.est_decode_tok_s > gpu_only.est_decode_tok_s
    config = official_config("gpt-oss-20b")
    both = Bandwidths(gpu_gb_s=450.0 * GPU_EFFICIENCY, pcie_gb_s=25.0, cpu_share_gb_s=21.2)
    wide = Bandwidths(gpu_gb_s=450.0 * GPU_EFFICIENCY, pcie_gb_s=25.0 + 21.2 / 0.85)  # one link as fast as both
    assert make_plan(config, tensor_sizes(config), hw, Wishes(bandwidths=both)).est_decode_tok_s == \
        pytest.approx(make_plan(config, tensor_sizes(config), hw, Wishes(bandwidths=wide)).est_decode_tok_s,
                      rel=0.02)
    monkeypatch.setenv("GPTOSS_CPU_EXPERTS", "0")  # the user turned the share off: the GPU alone, as estimated
    off = plan_for("gpt-oss-20b", hw)
    assert off.est_decode_tok_s == gpu_only.est_decode_tok_s
    assert any("alone (GPTOSS_CPU_EXPERTS=0), which bounds decode speed" in n for n in off.notes)
