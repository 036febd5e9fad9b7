"""Weight-only int8 linear: the quantiser, and the Triton GEMV (few rows) and GEMM (many rows) against the reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import int8  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_quantize_is_per_row_symmetric_within_half_a_step() -> None:
    w = torch.randn(33, 70) * torch.logspace(-3, 1, 33)[:, None]
    w[5] = 0.0
    q, scale = int8.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (33,)
    assert q.abs().max() == 127 and q.min() >= -127
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6 * w.abs())
    assert scale[5] == 1.0 and not q[5].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,N,K,bias", [(1, 37, 200, True), (3, 100, 300, False), (4, 16, 4, True),
                                        (9, 70, 132, True), (33, 130, 68, False)])
def test_linear_int8_matches_reference(T: int, N: int, K: int, bias: bool, dtype: torch.dtype) -> None:
    """fp32: only the summation order differs (1e-6 of the scale). bf16: the output is rounded to bf16 (truncated by
    Triton's CPU interpreter), up to 2**-7 relative, and the GEMM's bf16 products are exact."""
    gen = torch.Generator().manual_seed(T * N + K)
    q, scale = int8.quantize_int8(torch.randn(N, K, generator=gen))
    b = torch.randn(N, generator=gen).to(dtype).to(DEVICE) if bias else None
    x = torch.randn(T, K, generator=gen).to(dtype).to(DEVICE)
    q, scale = q.to(DEVICE), scale.to(DEVICE)
    ref = int8.linear_int8_reference(x, q, scale, b)
    out = int8.linear_int8(x, q, scale, b)
    assert out.shape == (T, N) and out.dtype == dtype
    big = ref.float().abs().max().item()
    tol = dict(rtol=1e-5, atol=1e-5 * big) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-7 * big)
    torch.testing.assert_close(out.float(), ref.float(), **tol)


@pytest.mark.parametrize("K,large", [(1300, True), (2500, False), (4096, False)])
def test_linear_int8_gemv_loops_over_long_rows(K: int, large: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows longer than one loop trip, for each launch shape the GEMV picks: the large-matrix shape (forced here
    by a zero threshold; 512 bytes a trip, K = 1300 ends mid-tile), the small one (1024 bytes, a ragged last trip)
    and the one for rows that are multiples of 2048 (two whole trips). A wrong prefetched tile or x slice is O(1)."""
    if large:
        monkeypatch.setattr(int8, "GEMV_SMALL_BYTES", 0)
    gen = torch.Generator().manual_seed(K)
    q, scale = int8.quantize_int8(torch.randn(20, K, generator=gen))
    x = torch.randn(1, K, generator=gen).to(DEVICE)
    b = torch.randn(20, generator=gen).to(DEVICE)
    q, scale = q.to(DEVICE), scale.to(DEVICE)
    ref = int8.linear_int8_reference(x, q, scale, b)
    torch.testing.assert_close(int8.linear_int8(x, q, scale, b), ref, rtol=1e-5,
                               atol=1e-5 * ref.abs().max().item())


def test_linear_int8_rejects_k_not_divisible_by_four() -> None:
    q, scale = int8.quantize_int8(torch.randn(8, 6))
    with pytest.raises(ValueError, match="divisible by 4"):
        int8.linear_int8(torch.randn(1, 6, device=DEVICE), q.to(DEVICE), scale.to(DEVICE), None)


def test_linear_int8_writes_the_fp32_sums_when_asked() -> None:
    """The lm_head asks for float32 logits: the GEMV stores its fp32 sums once, with no bf16 round trip, so they
    match the float64 product to fp32 precision where the bf16 output is ~2**-8 off."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 256, generator=gen).bfloat16().to(DEVICE)
    q, scale = int8.quantize_int8(torch.randn(48, 256, generator=gen).to(DEVICE))
    exact = x.double() @ (q.double() * scale.double()[:, None]).T
    out = int8.linear_int8(x, q, scale, None, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    rounded = int8.linear_int8(x, q, scale, None)
    assert rounded.dtype == torch.bfloat16  # one rounding of the same sums (the interpreter truncates)
    torch.testing.assert_close(rounded.float(), out, rtol=2**-7, atol=0)
