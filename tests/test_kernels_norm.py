"""Fused RMSNorm (+ residual add) Triton kernel against the torch reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tol(dtype: torch.dtype) -> dict[str, float]:
    """fp32: sqrt-then-divide against torch's rsqrt, a few fp32 ulps. bf16: two bf16 ulps (2**-6 relative): the
    fp32 values may sit on either side of a rounding boundary, and Triton's CPU interpreter truncates fp32->bf16
    where torch rounds to nearest. The residual sum is one rounding of an exact fp32 sum on both sides."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,H", [(1, 2880), (5, 300), (3, 7)])
def test_rms_norm_and_fused_residual_match_reference(T: int, H: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T * H)
    x = (3 * torch.randn(T, H, generator=gen)).to(dtype).to(DEVICE)
    delta = torch.randn(T, H, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.rand(H, generator=gen) + 0.5).to(DEVICE)
    torch.testing.assert_close(norm.rms_norm(x, weight, 1e-5).float(),
                               norm.rms_norm_reference(x, weight, 1e-5).float(), **_tol(dtype))
    residual, normed = norm.add_rms_norm(x, delta, weight, 1e-5)
    ref_residual, ref_normed = norm.add_rms_norm_reference(x, delta, weight, 1e-5)
    assert residual.dtype == dtype and normed.dtype == dtype
    torch.testing.assert_close(residual.float(), ref_residual.float(), **_tol(dtype))
    torch.testing.assert_close(normed.float(), ref_normed.float(), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,V,H", [(1, 50, 2880), (3, 17, 300)])
def test_embedding_lookup_with_the_first_norm_matches_reference(T: int, V: int, H: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(V * H)
    table = (3 * torch.randn(V, H, generator=gen)).to(dtype).to(DEVICE)
    weight = (torch.rand(H, generator=gen) + 0.5).to(DEVICE)
    ids = torch.tensor([V - 1, 0, 5][:T], device=DEVICE)
    x, normed = norm.embed_rms_norm(ids, table, weight, 1e-5, dtype)
    want_x, want = norm.embed_rms_norm_reference(ids, table, weight, 1e-5, dtype)
    assert x.dtype == dtype and normed.dtype == dtype
    assert torch.equal(x, want_x)
    torch.testing.assert_close(normed.float(), want.float(), **_tol(dtype))


def test_embedding_lookup_reads_a_table_kept_in_host_ram() -> None:
    """A plan may keep the table in RAM: pinned, the kernel reads the token's row in place (on a GPU; under the CPU
    interpreter everything is host memory) and writes its outputs where the ids are."""
    gen = torch.Generator().manual_seed(7)
    table = torch.randn(40, 96, generator=gen).to(torch.bfloat16).pin_memory() if torch.cuda.is_available() \
        else torch.randn(40, 96, generator=gen).to(torch.bfloat16)
    weight = (torch.rand(96, generator=gen) + 0.5).to(DEVICE)
    ids = torch.tensor([39], device=DEVICE)
    x, normed = norm.embed_rms_norm(ids, table, weight, 1e-5, torch.bfloat16)
    want_x, want = norm.embed_rms_norm_reference(ids.cpu(), table, weight.cpu(), 1e-5, torch.bfloat16)
    assert x.device == ids.device and torch.equal(x.cpu(), want_x)
    torch.testing.assert_close(normed.cpu().float(), want.float(), **_tol(torch.bfloat16))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="pinned"):
            norm.embed_rms_norm(ids, table.float().bfloat16(), weight, 1e-5, torch.bfloat16)  # pageable RAM
