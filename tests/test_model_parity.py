"""The model math against Hugging Face transformers' GptOssForCausalLM on random tiny checkpoints (float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gptoss_cli
from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle (pip install .[test])")

TOL = 1e-4
N_TOKENS = 320  # past the sliding window and past original_max_position_embeddings (YaRN)

SHAPES = {
    "tiny-gqa": tiny_config_dict(),
    "mha-4-layers": tiny_config_dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                     head_dim=32, hidden_size=96, intermediate_size=64, num_local_experts=8,
                                     num_experts_per_tok=4, sliding_window=32),
    "mqa-1-layer-all-experts": tiny_config_dict(num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=1,
                                                head_dim=8, hidden_size=32, intermediate_size=32,
                                                num_local_experts=2, num_experts_per_tok=2, sliding_window=7,
                                                original_max_position_embeddings=128, rope_factor=4.0),
    "wide-head-2-layers": tiny_config_dict(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                           head_dim=64, hidden_size=128, intermediate_size=160,
                                           num_local_experts=16, num_experts_per_tok=4, vocab_size=777),
}


def hf_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.GptOssForCausalLM.from_pretrained(
        model_dir, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_match_transformers(shape: str, tmp_path: Path) -> None:
    raw = SHAPES[shape]
    model_dir = write_checkpoint(tmp_path / shape, raw, seed=hash(shape) % 1000)
    ids = torch.randint(0, raw["vocab_size"], (N_TOKENS,), generator=torch.Generator().manual_seed(7))
    assert N_TOKENS > raw["rope_scaling"]["original_max_position_embeddings"]
    assert N_TOKENS > raw["sliding_window"]
    ref = hf_logits(model_dir, ids)
    engine = gptoss_cli.load(model_dir, device="cpu", dtype=torch.float32)
    ours = engine.logits(ids.tolist())
    assert ours.dtype == torch.float32 and ours.shape == (N_TOKENS, raw["vocab_size"])
    assert ref.abs().max() > 1.0  # the logits are not trivially small
    assert (ours - ref).abs().max().item() <= TOL


def test_incremental_decode_matches_full_forward(tiny_model_dir: Path) -> None:
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    engine.prefill_chunk = 37  # chunks larger and smaller than the 16-slot ring
    ids = torch.randint(0, 1024, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    full = engine.logits(ids)
    rows = [engine.prefill(ids[:150])]
    rows += [engine.step(t) for t in ids[150:299]]
    incremental = torch.stack(rows)
    assert (incremental - full[149:299]).abs().max().item() <= TOL


def test_prefix_reuse_rewinds_through_ring_snapshots(tiny_model_dir: Path) -> None:
    """A second prompt that shares only part of the first is exact, and reuses what it can."""
    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    turn1 = torch.randint(0, 1024, (90,), generator=gen).tolist()
    completion = torch.randint(0, 1024, (60,), generator=gen).tolist()
    engine.prefill(turn1)
    for t in completion:
        engine.step(t)
    # The next turn keeps turn1 and one token of the completion, then differs (as when analysis is dropped).
    turn2 = turn1 + completion[:1] + torch.randint(0, 1024, (40,), generator=gen).tolist()
    last = engine.prefill(turn2)
    assert engine.stats.reused_tokens == len(turn1)  # the snapshot taken after the first prefill
    assert engine.stats.prefill_tokens == len(turn2) - len(turn1)
    assert (last - engine.logits(turn2)[-1]).abs().max().item() <= TOL
    # Extending the same history reuses all of it.
    turn3 = turn2 + [5, 6, 7]
    engine.prefill(turn3)
    assert engine.stats.reused_tokens == len(turn2)
