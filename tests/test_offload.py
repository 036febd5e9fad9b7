"""Experts served from host RAM through the GPU-slot cache compute exactly what resident experts do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gptoss_cli
from gptoss_cli.engine.offload import OffloadCosts, with_offload
from gptoss_cli.settings import CPU_EXPERTS_ENV


@pytest.mark.parametrize(("layers", "slots"), [([0], 0), ([0, 1, 2], 3), ([1], 5), ([0, 2], 100)])
def test_offloaded_layers_give_the_same_logits(tiny_model_dir: Path, layers: list[int], slots: int) -> None:
    ids = torch.randint(0, 1024, (70,), generator=torch.Generator().manual_seed(4)).tolist()
    resident = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    want_full = resident.logits(ids)
    want_steps = [resident.prefill(ids[:50])] + [resident.step(t) for t in ids[50:60]]

    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, slots, layers)
    assert offload is not None and offload.layers == layers
    assert "expert offload" in engine.model.ops.name
    assert torch.equal(engine.logits(ids), want_full)
    got_steps = [engine.prefill(ids[:50])] + [engine.step(t) for t in ids[50:60]]
    assert all(torch.equal(a, b) for a, b in zip(got_steps, want_steps))
    stats = offload.stats
    assert stats.calls > 0 and stats.misses > 0
    if slots == 0:
        assert stats.hits == 0
    if slots >= 5 * len(layers):  # every expert of every offloaded layer fits: only first touches miss
        assert stats.misses <= 5 * len(layers) and stats.hits > 0
    assert stats.bytes_from_host == stats.misses * offload.expert_bytes


def test_no_offload_when_every_expert_is_resident(tiny_model_dir: Path) -> None:
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert with_offload(engine.model, 10) is None and engine.offload is None


def _steps_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Decode logits with CPU-computed experts: the same math summed in another order (fp32 rounding)."""
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize(("layers", "slots", "fraction", "concurrent"),
                         [([0, 1, 2], 0, 1.0, False), ([0, 2], 3, 0.5, True), ([1], 2, 1.0, False),
                          ([0, 1], 4, 0.3, False)])
def test_decode_misses_computed_on_the_cpu_give_the_same_logits(tiny_model_dir: Path, layers: list[int],
                                                                slots: int, fraction: float,
                                                                concurrent: bool) -> None:
    """Some or all decode misses computed on the CPU (on a worker thread, as on CUDA, or inline)."""
    ids = torch.randint(0, 1024, (70,), generator=torch.Generator().manual_seed(4)).tolist()
    resident = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    want_full = resident.logits(ids)
    want_steps = [resident.prefill(ids[:50])] + [resident.step(t) for t in ids[50:62]]

    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, slots, layers, cpu_fraction=fraction, concurrent=concurrent)
    assert offload is not None and offload.cpu_fraction == fraction and offload.concurrent == concurrent
    assert torch.equal(engine.logits(ids), want_full)  # many tokens: prefill streams every expert, as before
    prefill = engine.prefill(ids[:50])
    assert torch.equal(prefill, want_steps[0]) and offload.stats.cpu_experts == 0
    copied = offload.stats.bytes_from_host
    _steps_close([prefill] + [engine.step(t) for t in ids[50:62]], want_steps)
    stats = offload.stats
    assert stats.cpu_experts > 0 and stats.cpu_seconds > 0
    if fraction == 1.0:  # every decode miss was computed on the CPU: nothing more crossed the link
        assert stats.bytes_from_host == copied
    assert stats.bytes_from_host == (stats.misses - stats.cpu_experts) * offload.expert_bytes


def test_the_cost_model_picks_the_cpu_share(tiny_model_dir: Path) -> None:
    ids = torch.randint(0, 1024, (60,), generator=torch.Generator().manual_seed(5)).tolist()
    resident = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    want = [resident.prefill(ids[:40])] + [resident.step(t) for t in ids[40:48]]

    # a CPU far faster than the link: every decode miss is computed on the CPU, nothing crosses "PCIe"
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, 0, [0, 2], costs=OffloadCosts(pcie_bytes_s=1.0, cpu_bytes_s=1e30))
    assert offload.cpu_fraction is None
    got = [engine.prefill(ids[:40])]
    copied = offload.stats.bytes_from_host
    got += [engine.step(t) for t in ids[40:48]]
    _steps_close(got, want)
    assert offload.stats.bytes_from_host == copied and offload.stats.cpu_experts == 8 * 2 * 2  # tokens x layers x k

    # a CPU far slower: every miss is copied, and the logits are exactly the resident ones
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, 0, [0, 2], costs=OffloadCosts(pcie_bytes_s=1e30, cpu_bytes_s=1.0))
    got = [engine.prefill(ids[:40])] + [engine.step(t) for t in ids[40:48]]
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and offload.stats.cpu_experts == 0


def test_cpu_share_follows_the_fraction_and_the_environment(tiny_model_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, 0, [1])
    assert offload.cpu_fraction == 0.0 and offload.costs is None  # the default: every miss crosses PCIe
    assert [offload.cpu_share(m) for m in range(4)] == [0, 0, 0, 0]
    offload.cpu_fraction = 0.5
    assert [offload.cpu_share(m) for m in range(5)] == [0, 1, 1, 2, 2]
    monkeypatch.setenv(CPU_EXPERTS_ENV, "1")
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert with_offload(engine.model, 0, [1]).cpu_fraction == 1.0
    monkeypatch.setenv(CPU_EXPERTS_ENV, "auto")
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert with_offload(engine.model, 0, [1]).cpu_fraction == 0.0


def test_cpu_experts_beside_the_triton_kernels(tiny_model_dir: Path) -> None:
    """The fast path's MoE kernels (Triton's interpreter here, ~2 s a token) also add exactly 0 for a zeroed
    staged expert, and route on fp32 logits, as the CPU side does: the same logits as the all-resident reference
    to the fast path's own tolerance (tests/test_fast_path.py); a wrong expert or weight is O(1) off."""
    pytest.importorskip("triton", reason="the Triton kernels run beside the CPU experts here")
    ids = torch.randint(0, 1024, (11,), generator=torch.Generator().manual_seed(6)).tolist()
    resident = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    want = [resident.prefill(ids[:9])] + [resident.step(t) for t in ids[9:]]
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32, fast=True)
    offload = with_offload(engine.model, 1, [0, 2], cpu_fraction=0.5)
    assert engine.model.ops.name.startswith("triton")
    got = [engine.prefill(ids[:9])] + [engine.step(t) for t in ids[9:]]
    assert max((a - b).abs().max().item() for a, b in zip(got, want)) < 1e-3
    assert offload.stats.cpu_experts > 0


def test_in_place_decode_needs_pinned_memory_and_counts_every_routed_expert(tiny_model_dir: Path) -> None:
    """Reading experts in place (and so graph capture) is for pinned host RAM on a CUDA device: never on the CPU,
    where the staging path stays. Graph steps are counted by the engine: k experts per offloaded layer per token."""
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    offload = with_offload(engine.model, 2, [0, 2])
    assert not offload.in_place and not engine.model.ops.graph_safe
    offload.count_in_place(3)
    k = engine.config.num_experts_per_tok
    assert offload.stats.misses == 3 * k * 2 and offload.stats.bytes_from_host == 3 * k * 2 * offload.expert_bytes
    assert offload.stats.hits == 0
