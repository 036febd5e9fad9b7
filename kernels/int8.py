"""Weight-only int8 linear layers (attention q/k/v/o and lm_head in the quantised plan): reference and Triton.

Weights are quantised per output row, symmetrically: ``scale[n] = max|w[n, :]| / 127``, ``q = round(w / scale)``.
The kernels read int8 weights and activations in their own dtype, accumulate in fp32, and apply the row scale and
the bias once per output: ``y = (x @ q^T) * scale + bias``.

Decode (a few rows of x) is a GEMV whose cost is the weight bytes. It reads the weights as int32 words and turns
each byte into fp32 by placing it in the mantissa of 2**23 (one byte permute on a GPU) and one subtraction (see
``_byte_to_f32``), cheaper than a conversion instruction.
Prefill widens int8 to the activation dtype in registers and uses tl.dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .interpret import dot_dtype, interpreting

# At or below this many rows of x the GEMV kernel runs; above it, the tiled GEMM.
GEMV_MAX_TOKENS = 4
_TWO_POW_23_BITS = tl.constexpr(0x4B000000)  # fp32 2**23: an 8-bit integer or-ed into the mantissa adds to it
_OFFSET = tl.constexpr(8388608.0 + 128.0)
_SIGN_FLIP = tl.constexpr(-2139062144)  # 0x80808080 as a signed int32


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q int8 [N, K], scale fp32 [N]); a zero row gets scale 1 and q = 0."""
    wf = w.float()
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def linear_int8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, K] -> [T, N] in x's dtype; fp32 math."""
    y = (x.float() @ q.float().T) * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@triton.jit
def _byte_to_f32(words, SHIFT: tl.constexpr, ASM: tl.constexpr):
    """Byte at bits SHIFT..SHIFT+7 of sign-flipped words (int8 + 128, so 0..255) -> the int8 as fp32.

    The byte lands in the mantissa of 2**23 (bits 0x4B000000), which reads as 2**23 + 128 + int8 exactly; one
    subtraction leaves the int8. No conversion instruction, and the offset never meets the accumulator. On a GPU
    one byte permute (``prmt``: byte SHIFT/8 of the word below the three upper bytes of 0x4B000000) places the
    byte; the CPU interpreter, which runs no inline PTX, shifts and masks.
    """
    if ASM:
        b = tl.inline_asm_elementwise(f"prmt.b32 $0, $1, 0x4B000000, {0x7650 + SHIFT // 8};", "=r,r", [words],
                                      dtype=tl.int32, is_pure=True, pack=1)
    else:
        if SHIFT == 24:
            b = (words >> 24) & 0xFF
        elif SHIFT == 0:
            b = words & 0xFF
        else:
            b = (words >> SHIFT) & 0xFF
        b = b | _TWO_POW_23_BITS
    return b.to(tl.float32, bitcast=True) - _OFFSET


@triton.jit
def _x_quad(x_row, cols, KWT):
    """x[4c + j] for the weight words c in ``cols``, as four fp32 vectors (j = 0..3): four strided loads of the
    small, cached x row, which measured as fast as one load split four ways or faster (.notes/kernels.md)."""
    m = cols < KWT
    x0 = tl.load(x_row + cols * 4, mask=m, other=0.0).to(tl.float32)
    x1 = tl.load(x_row + cols * 4 + 1, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + cols * 4 + 2, mask=m, other=0.0).to(tl.float32)
    x3 = tl.load(x_row + cols * 4 + 3, mask=m, other=0.0).to(tl.float32)
    return x0, x1, x2, x3


@triton.jit
def _gemv_kernel(x_ptr, words_ptr, scale_ptr, bias_ptr, y_ptr, N, K, stride_x, stride_y,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr,
                 PDL: tl.constexpr):
    """One program: BLOCK_N outputs of one row of x. Weights are read as int32 words (4 int8 each, little endian:
    byte i of word j is column 4j+i); partial sums stay per lane until after the K loop. As in the bf16 GEMV
    (kernels/gemv.py) the program lets its dependents launch, requests its first weight tile and only then waits
    for the previous kernel (weights are never written), and keeps the next tile in flight while it sums one."""
    KW: tl.constexpr = BLOCK_K // 4
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    t = tl.program_id(1)
    n_mask = rows < N
    pdl.signal(PDL)
    KWT = K // 4
    row_ptr = words_ptr + rows.to(tl.int64)[:, None] * KWT
    offs_w = tl.arange(0, KW)
    acc = tl.zeros([BLOCK_N, KW], dtype=tl.float32)
    w = tl.load(row_ptr + offs_w[None, :], mask=n_mask[:, None] & (offs_w < KWT)[None, :], other=0)
    pdl.wait_only(PDL)
    x0, x1, x2, x3 = _x_quad(x_ptr + t * stride_x, offs_w, KWT)
    for k0 in range(0, KWT, KW):
        cols = k0 + KW + offs_w
        w_next = tl.load(row_ptr + cols[None, :], mask=n_mask[:, None] & (cols < KWT)[None, :], other=0)
        x0_next, x1_next, x2_next, x3_next = _x_quad(x_ptr + t * stride_x, cols, KWT)
        w = w ^ _SIGN_FLIP  # int8 -> int8 + 128 in every byte
        acc += _byte_to_f32(w, 0, ASM) * x0[None, :]
        acc += _byte_to_f32(w, 8, ASM) * x1[None, :]
        acc += _byte_to_f32(w, 16, ASM) * x2[None, :]
        acc += _byte_to_f32(w, 24, ASM) * x3[None, :]
        w = w_next
        x0, x1, x2, x3 = x0_next, x1_next, x2_next, x3_next
    y = tl.sum(acc, axis=1) * tl.load(scale_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * stride_y + rows, y.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemm_kernel(x_ptr, q_ptr, scale_ptr, bias_ptr, y_ptr, T, N, K, stride_x, stride_y,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_DTYPE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < T
    n_mask = rows < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(x_ptr + offs_m[:, None] * stride_x + ks[None, :], mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0)
        w = tl.load(q_ptr + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=n_mask[:, None] & k_mask[None, :],
                    other=0)
        acc = tl.dot(a.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), acc, input_precision="ieee")
    y = acc * tl.load(scale_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_y + rows[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


# Launch shapes, chosen on an H200 (see .notes/kernels.md); the benchmark script overrides them to sweep.
GEMV_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 512, "num_warps": 4}  # large matrices (lm_head)
GEMV_CONFIG_SMALL = {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4}  # below GEMV_SMALL_BYTES: fewer, longer loads
GEMV_CONFIG_SMALL_EVEN = {"BLOCK_N": 8, "BLOCK_K": 2048, "num_warps": 4}  # ... whose rows are multiples of 2048
GEMV_SMALL_BYTES = 64 * 2**20
GEMM_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}




def linear_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [T, K] @ int8 q [N, K]^T * scale [N] (+ bias [N]) -> [T, N] in ``out_dtype`` (default x's), with the Triton
    kernels; the fp32 sums are rounded once, to that dtype (the lm_head's logits: fp32, no bf16 round trip)."""
    if not (x.is_cuda or interpreting()):
        raise ValueError("the Triton int8 linear needs CUDA tensors (or TRITON_INTERPRET=1); use the reference")
    T, K = x.shape
    N = q.shape[0]
    if K % 4:
        raise ValueError(f"int8 linear needs K divisible by 4 (the GEMV reads 4 weights per word), got {K}")
    if q.dtype != torch.int8 or q.shape != (N, K) or scale.shape != (N,) or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"int8 linear shapes disagree: x {tuple(x.shape)}, q {tuple(q.shape)} {q.dtype}, "
                         f"scale {tuple(scale.shape)}")
    x, q = x.contiguous(), q.contiguous()
    y = torch.empty(T, N, dtype=out_dtype or x.dtype, device=x.device)
    b = bias if bias is not None else scale
    if T <= GEMV_MAX_TOKENS:
        cfg = (GEMV_CONFIG if N * K >= GEMV_SMALL_BYTES else
               GEMV_CONFIG_SMALL_EVEN if K % GEMV_CONFIG_SMALL_EVEN["BLOCK_K"] == 0 else GEMV_CONFIG_SMALL)
        _gemv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), T)](x, q.view(torch.int32), scale, b, y, N, K, x.stride(0),
                                                          y.stride(0), HAS_BIAS=bias is not None, **cfg,
                                                          ASM=not interpreting(), **pdl.launch(x))
    else:
        cfg = GEMM_CONFIG
        _gemm_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))](
            x, q, scale, b, y, T, N, K, x.stride(0), y.stride(0), HAS_BIAS=bias is not None,
            DOT_DTYPE=dot_dtype(x.dtype), **cfg)
    return y
