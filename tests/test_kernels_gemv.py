"""The dense decode GEMV (kernels/gemv.py) against F.linear: odd sizes, with and without bias, a few rows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import gemv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,N,K,bias", [(1, 37, 1000, True), (3, 64, 96, False), (4, 5, 2049, True)])
def test_gemv_matches_linear(T: int, N: int, K: int, bias: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(N * K)
    x = torch.randn(T, K, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=gen).to(dtype).to(DEVICE) if bias else None
    out = gemv.linear(x, w, b)
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    assert out.dtype == dtype and out.shape == (T, N)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(out.float(), ref, **tol)


def test_many_rows_go_to_torch() -> None:
    x = torch.randn(gemv.GEMV_MAX_TOKENS + 1, 64)
    w = torch.randn(16, 64)
    torch.testing.assert_close(gemv.linear(x, w, None), x @ w.T)


def test_gemv_writes_the_fp32_sums_when_asked() -> None:
    """Float32 output from a bf16 GEMV (the lm_head's logits): the fp32 sums, rounded once when bf16 is asked for."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 160, generator=gen).bfloat16().to(DEVICE)
    w = torch.randn(40, 160, generator=gen).bfloat16().to(DEVICE)
    exact = x.double() @ w.double().T
    out = gemv.linear(x, w, None, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    # one rounding of the same sums (Triton's CPU interpreter truncates to bf16, a GPU rounds to nearest)
    torch.testing.assert_close(gemv.linear(x, w, None).float(), out, rtol=2**-7, atol=0)
