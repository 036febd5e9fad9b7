"""Experts served from host RAM through the GPU-slot cache compute exactly what resident experts do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gptoss_cli
from gptoss_cli.engine.offload import with_offload


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
