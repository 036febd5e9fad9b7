"""Fused RoPE + KV-cache write against its torch reference (and the reference against the model's own RoPE)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import rope  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(T: int, Hq: int, Hkv: int, D: int, S: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    qkv = (2 * torch.randn(T, (Hq + 2 * Hkv) * D, generator=gen)).to(dtype).to(DEVICE)
    positions = torch.randint(0, 5000, (T,), generator=gen).to(DEVICE)
    slots = torch.randperm(S, generator=gen)[:T].to(DEVICE)
    inv_freq = (1.0 / (150000.0 ** (torch.arange(0, D, 2).float() / D))).to(DEVICE)
    caches = [torch.randn(S, Hkv, D, generator=gen).to(dtype).to(DEVICE) for _ in range(2)]
    k_pos = torch.full((S,), -1, dtype=torch.long, device=DEVICE)
    return qkv, positions, slots, inv_freq, caches, k_pos


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,Hq,Hkv,D,S", [(1, 8, 2, 16, 40), (3, 4, 4, 64, 17), (2, 6, 1, 32, 9)])
def test_fused_rope_and_cache_write_match_reference(T, Hq, Hkv, D, S, dtype) -> None:
    qkv, positions, slots, inv_freq, (kc, vc), kpos = _inputs(T, Hq, Hkv, D, S, dtype, seed=T * D + S)
    kc2, vc2, kpos2 = kc.clone(), vc.clone(), kpos.clone()
    want = rope.rope_qkv_cache_reference(qkv, positions, slots, inv_freq, 1.3466, kc, vc, kpos, Hq)
    got = rope.rope_qkv_cache(qkv, positions, slots, inv_freq, 1.3466, kc2, vc2, kpos2, Hq)
    # fp32: cos/sin of the same fp32 angle (libm vs torch) agree to a few ulps. bf16: the reference rounds
    # cos/sin and each product to bf16, the kernel once at the end: a few bf16 ulps of values up to ~10.
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2**-6, atol=0.1)
    torch.testing.assert_close(got.float(), want.float(), **tol)
    torch.testing.assert_close(kc2.float(), kc.float(), **tol)
    assert torch.equal(vc2, vc) and torch.equal(kpos2, kpos)
    untouched = torch.ones(S, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert (kpos2[untouched] == -1).all() and (kpos2[slots] == positions).all()


def test_a_ring_slot_is_the_position_modulo_its_capacity() -> None:
    """Sliding layers pass their ring's capacity instead of slots: the kernel takes position % capacity itself."""
    qkv, _, _, inv_freq, (kc, vc), kpos = _inputs(3, 4, 2, 16, 7, torch.float32, seed=5)
    positions = torch.tensor([6, 7, 15], device=DEVICE)
    kc2, vc2, kpos2 = kc.clone(), vc.clone(), kpos.clone()
    want = rope.rope_qkv_cache_reference(qkv, positions, positions % 7, inv_freq, 1.1, kc, vc, kpos, 4)
    got = rope.rope_qkv_cache(qkv, positions, 7, inv_freq, 1.1, kc2, vc2, kpos2, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kc2, kc, rtol=1e-5, atol=1e-4)
    assert torch.equal(vc2, vc) and kpos2.tolist() == [7, 15, -1, -1, -1, -1, 6]
    ref_ring = rope.rope_qkv_cache_reference(qkv, positions, 7, inv_freq, 1.1, kc.clone(), vc.clone(), kpos.clone(), 4)
    assert torch.equal(ref_ring, want)


def test_reference_matches_the_model_rope() -> None:
    from gptoss_cli.model.transformer import apply_rope

    qkv, positions, slots, inv_freq, (kc, vc), kpos = _inputs(2, 4, 2, 16, 8, torch.float32, seed=3)
    q = rope.rope_qkv_cache_reference(qkv.cpu(), positions.cpu(), slots.cpu(), inv_freq.cpu(), 1.2, kc.cpu(),
                                      vc.cpu(), kpos.cpu(), 4)
    freqs = positions.cpu().float()[:, None] * inv_freq.cpu()[None, :]
    want = apply_rope(qkv.cpu()[:, :64].reshape(2, 4, 16), freqs.cos() * 1.2, freqs.sin() * 1.2)
    torch.testing.assert_close(q, want)
