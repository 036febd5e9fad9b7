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


def _true_moe(x: torch.Tensor, args: tuple, top_k: int) -> torch.Tensor:
    """The reference's function in float64 (no bf16 rounding of h): the oracle for precision, not bit equality."""
    wide = [a.double() if a.is_floating_point() else a for a in args]
    return moe_kernels.moe_reference(x.double(), *wide, top_k).double()


@pytest.mark.parametrize("x_scale", [1.0, 3e3, 1e-3], ids=["unit", "large", "small"])
def test_fp16x2_decode_error_stays_near_the_bf16_reference(x_scale: float) -> None:
    """bf16 activations take the fp16x2 GEMVs: each 32-element group is summed in fp16 (exact products, 16 terms a
    lane, ~6e-4 relative), so the output is not bit-equal to the fp32 reference, and the SwiGLU's (up + 1) carries
    the gate_up error into h. Pin how far it may be: against a float64 oracle its error stays within a few times
    the bf16 reference's own (which rounds h and the output to bf16; Triton's CPU interpreter truncates those casts
    instead of rounding, which roughly doubles the kernel's share here), for activations far above and below 1,
    where a fixed fp16 scaling would overflow or flush to zero. A wrong pairing, sign or scale is O(1) off."""
    T, H, I, E, top_k = 2, 256, 128, 4, 2
    x, *args = _inputs(T, H, I, E, top_k, torch.bfloat16, seed=7)
    x = (x.float() * x_scale).to(torch.bfloat16)
    args[4] = (args[4].float() / 8).to(torch.bfloat16)  # SwiGLU mostly inside the clamp, where errors show
    true = _true_moe(x, tuple(args), top_k)
    ref = moe_kernels.moe_reference(x, *args, top_k).double()
    out = moe_kernels.moe_decode(x, *args, top_k).double()
    assert torch.isfinite(out).all()
    ref_err = ((ref - true).norm() / true.norm()).item()
    out_err = ((out - true).norm() / true.norm()).item()
    assert out_err <= 6 * ref_err, (out_err, ref_err)


def test_fp16x2_down_gemv_sums_groups_to_fp16_precision() -> None:
    """The down GEMV alone, written to an fp32 output: relative error against float64 of the order of fp16's
    2**-11 (the packed h is exact), far below bf16's 2**-8 — a wrong pairing or scale would be O(1)."""
    T, H, I, E, top_k = 1, 96, 256, 3, 2
    x, *args = _inputs(T, H, I, E, top_k, torch.bfloat16, seed=3)
    routing = moe_kernels.router_logits(x, args[0], args[1])
    ids, wts, h = moe_kernels.gate_up_decode(x, routing, args[2], args[3], args[4], top_k, 1.702, 7.0)
    assert h.dtype == torch.int32  # fp16 pairs
    out = torch.empty(T, H, dtype=torch.float32, device=x.device)
    moe_kernels.down_decode(h, ids, wts, args[5], args[6], args[7], top_k, 7.0, out)
    lanes = h.cpu().view(torch.int16).view(torch.float16).double().view(T * top_k, I // 8, 4, 2)
    h_vals = lanes.permute(0, 1, 3, 2).reshape(T * top_k, I) / 2.0 ** moe_kernels._h_exp(7.0)
    true = torch.zeros(T, H, dtype=torch.float64)
    for r, (e, w) in enumerate(zip(ids.tolist(), wts.tolist())):
        from gptoss_kernels import mxfp4
        w2 = mxfp4.dequantize(args[5][e].cpu(), args[6][e].cpu(), torch.float64)
        true[r // top_k] += w * (h_vals[r] @ w2.T + args[7][e].cpu().double())
    err = ((out.cpu().double() - true).norm() / true.norm()).item()
    assert err < 2e-3, err


def test_add_rms_norm_route_equals_add_rms_norm_then_router() -> None:
    """The decode step's fused launch (residual add, MoE RMSNorm, router logits, fp16 pairs) gives what the two
    separate kernels give."""
    from gptoss_kernels import norm as norm_kernels

    gen = torch.Generator().manual_seed(5)
    T, H, E = 2, 160, 6
    x = torch.randn(T, H, generator=gen).bfloat16().to(DEVICE)
    delta = torch.randn(T, H, generator=gen).bfloat16().to(DEVICE)
    norm_w = (1 + 0.1 * torch.randn(H, generator=gen)).bfloat16().to(DEVICE)
    router_w = (torch.randn(E, H, generator=gen) / H**0.5).bfloat16().to(DEVICE)
    router_b = torch.randn(E, generator=gen).bfloat16().to(DEVICE)
    res, t, routing = moe_kernels.add_rms_norm_route(x, delta, norm_w, 1e-5, router_w, router_b)
    res_ref, t_ref = norm_kernels.add_rms_norm(x, delta, norm_w, 1e-5)
    torch.testing.assert_close(res, res_ref, rtol=0, atol=0)
    torch.testing.assert_close(t, t_ref, rtol=0, atol=0)
    for got, want in zip(routing, moe_kernels.router_logits(t_ref, router_w, router_b)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 3])
def test_down_decode_with_residual_ends_the_layer_like_add_rms_norm(T: int) -> None:
    """The down GEMV's last program adds the whole MoE output row to the residual and normalises it (the next
    layer's RMSNorm): the same residual and normed rows as norm.add_rms_norm on the plain output, for every token;
    calling it twice shows the per-token counters are left at zero (else the second call would skip the norm)."""
    from gptoss_kernels import norm as norm_kernels

    H, I, E, top_k = 96, 64, 4, 2
    x, *args = _inputs(T, H, I, E, top_k, torch.bfloat16, seed=11)
    gen = torch.Generator().manual_seed(12)
    residual = torch.randn(T, H, generator=gen).bfloat16().to(DEVICE)
    norm_w = (1 + 0.1 * torch.randn(H, generator=gen)).bfloat16().to(DEVICE)
    routing = moe_kernels.router_logits(x, args[0], args[1])
    ids, wts, h = moe_kernels.gate_up_decode(x, routing, args[2], args[3], args[4], top_k, 1.702, 7.0)
    plain = moe_kernels.down_decode(h, ids, wts, args[5], args[6], args[7], top_k, 7.0, torch.empty_like(x))
    want_res, want_t = norm_kernels.add_rms_norm(residual, plain, norm_w, 1e-5)
    for _ in range(2):
        res, t = moe_kernels.down_decode(h, ids, wts, args[5], args[6], args[7], top_k, 7.0, torch.empty_like(x),
                                         residual=(residual, norm_w, 1e-5))
        torch.testing.assert_close(res, want_res, rtol=0, atol=0)
        torch.testing.assert_close(t, want_t, rtol=0, atol=0)
    assert not moe_kernels._counters(x.device, T)[:T].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path,T", [("decode", 1), ("decode", 2), ("prefill", 37)])
def test_paired_layout_gives_the_same_output_bit_for_bit(path: str, T: int, dtype: torch.dtype) -> None:
    """Experts the engine keeps on the GPU are re-laid (mxfp4.to_paired) for a cheaper decode: every kernel that
    reads them (fp16x2 and fp32 GEMVs, the prefill GEMMs) must see the same codes, so the output is bit-identical."""
    from gptoss_kernels import mxfp4

    args = list(_inputs(T, 64, 96, 5, 2, dtype, seed=T * 100 + 11))
    run = moe_kernels.moe_decode if path == "decode" else moe_kernels.moe_prefill
    hub = run(*args, 2)
    args[3], args[6] = mxfp4.to_paired(args[3]), mxfp4.to_paired(args[6])
    paired = run(*args, 2)
    assert torch.equal(paired, hub)
    torch.testing.assert_close(hub.float(), moe_kernels.moe_reference(*args, 2).float(),
                               **_tolerances(moe_kernels.moe_reference(*args, 2)))


@pytest.mark.parametrize("slices", [2, 4])
def test_gate_up_split_over_expert_slices_gives_the_same_output(slices: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch shape for balance: each gate_up program computes a slice of the token's k experts (top_k = 3 pads to
    4: with 2 slices the second has one masked slot, with 4 one slot each). Same math, so bit-identical."""
    args = _inputs(1, 64, 64, 6, 3, torch.bfloat16, seed=21)
    want = moe_kernels.moe_decode(*args, 3)
    monkeypatch.setitem(moe_kernels.DECODE_CONFIG, "gate_up", {**moe_kernels.DECODE_CONFIG["gate_up"],
                                                               "expert_slices": slices})
    assert torch.equal(moe_kernels.moe_decode(*args, 3), want)
