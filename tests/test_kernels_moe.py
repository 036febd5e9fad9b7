"""The Triton MXFP4 MoE kernels (decode GEMV path and prefill grouped-GEMM path) against the torch reference.

On a machine without CUDA they run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET), so shapes
are small but deliberately awkward: hidden and expert widths that are not multiples of the kernels' tiles, every
byte value and a spread of scales (the 0.5 code, whose fp32 form is subnormal, and -0 included), SwiGLU
pre-activations well past the +-7 clamp, one expert, top_k = E.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import moe as moe_kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tolerances(ref: torch.Tensor) -> dict[str, float]:
    """fp32: the kernels compute the reference's function with another summation order (fp32 rounding, ~1e-6 of
    the scale). bf16: the output and the SwiGLU output h are rounded to bf16 on both sides, but a 1e-6 difference
    can flip a rounding, and Triton's CPU interpreter truncates fp32->bf16 where torch rounds to nearest, so
    allow a couple of bf16 ulps (2**-7 relative) of each element plus 2**-5 of the output scale for h's flips
    carried through the down projection. A wrong code, scale, nibble order, expert or clamp is O(1) off."""
    scale = ref.float().abs().max().item()
    if ref.dtype == torch.float32:
        return dict(rtol=1e-4, atol=1e-4 * scale)
    return dict(rtol=2**-6, atol=2**-5 * scale)


def _inputs(T: int, H: int, I: int, E: int, top_k: int, dtype: torch.dtype, seed: int) -> tuple:
    """Random weights with every byte value; router inputs redrawn until the k-th and (k+1)-th logits of every token
    are at least 1e-3 apart, so fp32 summation order cannot change which experts are picked."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(100):
        x = torch.randn(T, H, generator=gen).to(dtype)
        router_w = (torch.randn(E, H, generator=gen) / H**0.5).to(dtype)
        router_b = torch.randn(E, generator=gen).to(dtype)
        logits = x.float() @ router_w.float().T + router_b.float()
        if top_k == E or (logits.topk(top_k + 1).values.diff(dim=-1).abs().min() > 1e-3):
            break
    gate_up_blocks = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=gen)
    gate_up_scales = torch.randint(118, 126, (E, 2 * I, H // 32), dtype=torch.uint8, generator=gen)
    gate_up_bias = (8 * torch.randn(E, 2 * I, generator=gen)).to(dtype)  # many pre-activations beyond +-7
    down_blocks = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=gen)
    down_scales = torch.randint(116, 124, (E, H, I // 32), dtype=torch.uint8, generator=gen)
    down_bias = torch.randn(E, H, generator=gen).to(dtype)
    tensors = (x, router_w, router_b, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales,
               down_bias)
    return tuple(t.to(DEVICE) for t in tensors)


CASES = [  # T, H, I, E, top_k
    (1, 96, 64, 1, 1),  # one expert
    (3, 64, 96, 5, 2),
    (2, 96, 32, 4, 4),  # top_k = E
    (4, 160, 64, 8, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,H,I,E,top_k", CASES)
def test_decode_path_matches_reference(T: int, H: int, I: int, E: int, top_k: int, dtype: torch.dtype) -> None:
    args = _inputs(T, H, I, E, top_k, dtype, seed=T * 1000 + E)
    ref = moe_kernels.moe_reference(*args, top_k)
    out = moe_kernels.moe_decode(*args, top_k)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **_tolerances(ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,H,I,E,top_k", [(37, 96, 64, 6, 2), (9, 64, 32, 1, 1), (20, 64, 64, 3, 3)])
def test_prefill_path_matches_reference(T: int, H: int, I: int, E: int, top_k: int, dtype: torch.dtype) -> None:
    args = _inputs(T, H, I, E, top_k, dtype, seed=T * 1000 + E + 7)
    ref = moe_kernels.moe_reference(*args, top_k)
    out = moe_kernels.moe_prefill(*args, top_k)
    torch.testing.assert_close(out.float(), ref.float(), **_tolerances(ref))


def test_swiglu_constants_reach_the_kernels() -> None:
    args = _inputs(2, 64, 32, 3, 2, torch.float32, seed=5)
    ref = moe_kernels.moe_reference(*args, 2, alpha=1.0, limit=3.0)
    for path in (moe_kernels.moe_decode, moe_kernels.moe_prefill):
        out = path(*args, 2, alpha=1.0, limit=3.0)
        torch.testing.assert_close(out, ref, **_tolerances(ref))
    assert not torch.allclose(ref, moe_kernels.moe_reference(*args, 2), atol=1e-3)


def test_moe_dispatches_on_token_count(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(moe_kernels, "moe_decode", lambda *a, **k: calls.append("decode"))
    monkeypatch.setattr(moe_kernels, "moe_prefill", lambda *a, **k: calls.append("prefill"))
    for T in (1, moe_kernels.DECODE_MAX_TOKENS, moe_kernels.DECODE_MAX_TOKENS + 1):
        moe_kernels.moe(torch.zeros(T, 64), *[None] * 8, top_k=1)
    assert calls == ["decode", "decode", "prefill"]


def test_rejects_mismatched_expert_shapes() -> None:
    args = list(_inputs(1, 64, 32, 2, 1, torch.float32, seed=1))
    args[3] = args[3][:, :, :1]  # gate_up blocks for hidden size 32, not 64
    with pytest.raises(ValueError, match="do not fit hidden size 64"):
        moe_kernels.moe(*args, top_k=1)
