"""Dense bf16/fp16/fp32 linear layers for a few rows of x (decode): the torch reference and a Triton GEMV.

At batch 1 the attention projections are GEMVs whose cost is the weight bytes (q/k/v 29.5 MB, o 23.6 MB per layer
at the 20b shape). cuBLAS picks split-K kernels for them that need a second reduction launch and reached 1.9-2.9 TB/s
on an H200; this kernel streams whole rows with the next tile in flight while the current one is summed, adds the
bias and writes the output in one launch. Widening bf16 to fp32 is a shift (bf16 is the top half of an fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import pdl
from .interpret import interpreting

# At or below this many rows of x the GEMV runs; above it, the caller's GEMM (cuBLAS).
GEMV_MAX_TOKENS = 4
# Launch shapes, chosen on an H200 (see .notes/kernels.md); the benchmark script overrides them to sweep.
GEMV_CONFIG = {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4}  # attention projections: 9.5 / 8.9 us (cuBLAS 10.2 / 11.2)
GEMV_CONFIG_LARGE = {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4}  # lm_head: 259 us (cuBLAS 277)
GEMV_LARGE_BYTES = 256 * 2**20


def linear_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, bias)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, N, K, stride_x, stride_y,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """One program: BLOCK_N outputs of one row of x; partial sums stay per lane until after the K loop."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    t = tl.program_id(1)
    n_mask = rows < N
    pdl.signal(PDL)
    row_ptr = w_ptr + rows.to(tl.int64)[:, None] * K
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    w = tl.load(row_ptr + offs_k[None, :], mask=n_mask[:, None] & (offs_k < K)[None, :], other=0.0)
    pdl.wait_only(PDL)  # weights are never written: only x waits for the previous kernel
    xv = tl.load(x_ptr + t * stride_x + offs_k, mask=offs_k < K, other=0.0)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + BLOCK_K + offs_k
        w_next = tl.load(row_ptr + ks[None, :], mask=n_mask[:, None] & (ks < K)[None, :], other=0.0)
        x_next = tl.load(x_ptr + t * stride_x + ks, mask=ks < K, other=0.0)
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
        w = w_next
        xv = x_next
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * stride_y + rows, y.to(y_ptr.dtype.element_ty), mask=n_mask)



def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [T, K] @ w [N, K]^T (+ bias [N]) -> [T, N] in ``out_dtype`` (default x's): the GEMV for T <= GEMV_MAX_TOKENS
    on CUDA (or under the interpreter), which rounds its fp32 sums once, to that dtype; else torch's GEMM in x's
    dtype, converted."""
    T, K = x.shape
    if T > GEMV_MAX_TOKENS or not (x.is_cuda or interpreting()) or w.device != x.device:
        y = F.linear(x, w, bias)
        return y if out_dtype is None else y.to(out_dtype)
    N = w.shape[0]
    if w.shape != (N, K) or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"linear shapes disagree: x {tuple(x.shape)}, w {tuple(w.shape)}")
    x, w = x.contiguous(), w.contiguous()
    y = torch.empty(T, N, dtype=out_dtype or x.dtype, device=x.device)
    cfg = GEMV_CONFIG_LARGE if w.numel() * w.element_size() >= GEMV_LARGE_BYTES else GEMV_CONFIG
    _gemv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), T)](x, w, bias if bias is not None else w, y, N, K, x.stride(0),
                                                      y.stride(0), HAS_BIAS=bias is not None, **cfg,
                                                      **pdl.launch(x))
    return y
