"""The peaked random model (``random_tensors(..., peaked=True)``): confident like a trained model, so bf16 rounding
does not change its top-1, while attention and MoE still carry a material share of the residual stream; and the
plain random model is unchanged by the option's existence."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

import gptoss_cli
from gptoss_cli.engine.generator import Engine, load_random
from gptoss_cli.model.config import GptOssConfig
from gptoss_cli.model.random_weights import random_tensors, successor, tiny_config_dict, write_checkpoint

CFG = GptOssConfig.from_dict(tiny_config_dict())
IDS = torch.randint(0, CFG.vocab_size, (384,), generator=torch.Generator().manual_seed(7)).tolist()

# sha256 of the plain tiny model (seed 0), computed with the code before ``peaked`` existed.
PLAIN_TINY_SEED0 = "0591815a0c26b6017b97b575b14b118ec0895f1eb1747135a835b6c191a880e1"


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def engine(dtype: torch.dtype, peaked: bool = True) -> Engine:
    return load_random(CFG, device="cpu", dtype=dtype, context_length=len(IDS), fast=False, graphs=False,
                       peaked=peaked)


@pytest.fixture(scope="module")
def fp32() -> Engine:
    return engine(torch.float32)


def test_plain_random_model_is_unchanged(tmp_path: Path) -> None:
    assert digest(dict(random_tensors(CFG, seed=0))) == PLAIN_TINY_SEED0
    from safetensors.torch import load_file

    out = write_checkpoint(tmp_path / "plain", tiny_config_dict(), seed=0, shards=3)
    written: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        written.update(load_file(str(shard)))
    assert digest(written) == PLAIN_TINY_SEED0


def test_peaked_model_has_the_same_layout_and_differs() -> None:
    plain, peaked = dict(random_tensors(CFG, seed=0)), dict(random_tensors(CFG, seed=0, peaked=True))
    assert {n: (t.shape, t.dtype) for n, t in plain.items()} == {n: (t.shape, t.dtype) for n, t in peaked.items()}
    assert torch.equal(plain["model.embed_tokens.weight"], peaked["model.embed_tokens.weight"])
    assert not torch.equal(plain["lm_head.weight"], peaked["lm_head.weight"])


def test_peaked_model_is_confident_and_bf16_keeps_its_top1(fp32: Engine) -> None:
    want = fp32.logits(IDS)
    got = engine(torch.bfloat16).logits(IDS)
    top1 = want.argmax(-1)
    prob = torch.softmax(want, -1).max(-1).values.mean().item()
    assert 0.5 <= prob <= 0.9, prob  # trained-model-like: sure, but not one-hot
    assert (top1 == successor(CFG)[torch.tensor(IDS)]).float().mean().item() >= 0.95  # the bigram it encodes
    assert (got.argmax(-1) == top1).float().mean().item() >= 0.99  # teacher-forced, 384 positions


def test_peaked_model_attention_and_moe_contribute_materially(fp32: Engine) -> None:
    net = fp32.model
    updates: dict[str, list[torch.Tensor]] = {"attn": [], "moe": []}
    base_block, base_ops = net.attention_block, net.ops

    def recording_block(x: torch.Tensor, *args) -> torch.Tensor:
        y = base_block(x, *args)
        updates["attn"].append(y - x)
        return y

    def recording_moe(x: torch.Tensor, *args) -> torch.Tensor:
        y = base_ops.moe(x, *args)
        updates["moe"].append(y)
        return y

    net.attention_block = recording_block
    net.ops = dataclasses.replace(base_ops, moe=recording_moe)
    try:
        full = fp32.logits(IDS)
        attn, moe = (torch.stack(updates[k]).sum(0) for k in ("attn", "moe"))
        last = net.embed(torch.tensor(IDS)) + attn + moe  # the residual stream the final norm sees
        share = {k: (v.norm(dim=-1) / last.norm(dim=-1)).mean().item() for k, v in (("attn", attn), ("moe", moe))}
        net.attention_block = lambda x, *args: x
        net.ops = base_ops
        no_attn = fp32.logits(IDS)
        net.attention_block = base_block
        net.ops = dataclasses.replace(base_ops, moe=lambda x, *args: torch.zeros_like(x))
        no_moe = fp32.logits(IDS)
    finally:
        net.attention_block, net.ops = base_block, base_ops
    assert share["attn"] >= 0.2 and share["moe"] >= 0.25, share
    floor = (engine(torch.bfloat16).logits(IDS) - full).abs().mean().item()  # what bf16 rounding moves
    prob = torch.softmax(full, -1).max(-1).values
    for ablated in (no_attn, no_moe):
        assert (ablated - full).abs().mean().item() >= 10 * floor
        assert (torch.softmax(ablated, -1).max(-1).values - prob).abs().mean().item() >= 0.05


def test_peaked_checkpoint_on_disk_is_the_in_memory_model(tmp_path: Path, fp32: Engine) -> None:
    out = write_checkpoint(tmp_path / "peaked", tiny_config_dict(), seed=0, shards=3, peaked=True)
    loaded = gptoss_cli.load(out, device="cpu", dtype=torch.float32, fast=False, graphs=False)
    assert torch.equal(loaded.logits(IDS[:64]), fp32.logits(IDS[:64]))
