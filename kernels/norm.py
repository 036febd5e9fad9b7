"""RMSNorm, optionally fused with the residual add before it: torch reference and Triton kernel.

Math (specs/gpt-oss-model.md §4.2): statistics in fp32, ``x * rsqrt(mean(x^2) + eps)``, times the weight in fp32,
cast to the activation dtype. The fused form first forms the new residual ``x + delta`` in the activation dtype
(one rounding, as ``x + delta`` in torch), returns it, and normalises it: one read of each input and one write of
each output instead of the half-dozen element-wise launches torch needs (it matters at decode, where each is a launch).
A decode step starts with ``embed_rms_norm``: the token's embedding row looked up and normalised in the same launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .interpret import interpreting


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    return (t * weight.float()).to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (x + delta, rms_norm(x + delta))."""
    residual = x + delta
    return residual, rms_norm_reference(residual, weight, eps)


@triton.jit
def add_rms_norm_row(x_row, delta_row, w_ptr, res_row, y_row, H, eps, BLOCK_H: tl.constexpr):
    """One row, for kernels that end a layer with this norm: res = x + delta (rounded to res's dtype) and
    y = rms_norm(res) * w. Rows are read past L1 (``.cg``): a caller may be the last program of a grid whose other
    programs wrote delta."""
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    x = tl.load(x_row + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    x += tl.load(delta_row + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    x = x.to(res_row.dtype.element_ty)
    tl.store(res_row + offs, x, mask=mask)
    _rms_norm_store(x.to(tl.float32), w_ptr, y_row, H, eps, offs, mask)


@triton.jit
def _rms_norm_store(xf, w_ptr, y_row, H, eps, offs, mask):
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    y = xf * inv * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_row + offs, y.to(y_row.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(x_ptr, delta_ptr, w_ptr, res_ptr, y_ptr, H, stride_x, stride_d, stride_r, stride_y, eps,
                     HAS_DELTA: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)
    row = tl.program_id(0)
    if HAS_DELTA:
        add_rms_norm_row(x_ptr + row * stride_x, delta_ptr + row * stride_d, w_ptr, res_ptr + row * stride_r,
                         y_ptr + row * stride_y, H, eps, BLOCK_H)
    else:
        offs = tl.arange(0, BLOCK_H)
        mask = offs < H
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        _rms_norm_store(x, w_ptr, y_ptr + row * stride_y, H, eps, offs, mask)


def embed_rms_norm_reference(ids: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, eps: float,
                             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T] -> (table[ids] in ``dtype``, its rms_norm)."""
    x = table[ids].to(dtype)
    return x, rms_norm_reference(x, weight, eps)


@triton.jit
def _embed_rms_norm_kernel(ids_ptr, table_ptr, w_ptr, x_ptr, y_ptr, H, stride_table, eps, BLOCK_H: tl.constexpr,
                           PDL: tl.constexpr):
    pdl.wait(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    src = table_ptr + tl.load(ids_ptr + row).to(tl.int64) * stride_table
    x = tl.load(src + offs, mask=mask, other=0.0).to(x_ptr.dtype.element_ty)
    tl.store(x_ptr + row * H + offs, x, mask=mask)
    _rms_norm_store(x.to(tl.float32), w_ptr, y_ptr + row * H, H, eps, offs, mask)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if not (x.is_cuda or interpreting()):
        raise ValueError("the Triton RMSNorm needs CUDA tensors (or TRITON_INTERPRET=1); use the reference")
    if x.dim() != 2 or weight.shape != (x.shape[1],) or x.stride(1) != 1:
        raise ValueError(f"RMSNorm wants x [T, H] (contiguous rows) and weight [H], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")


def _num_warps(h: int) -> int:
    return 4 if h <= 4096 else 8


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] -> [T, H] in x's dtype, one program per row."""
    _check(x, weight)
    T, H = x.shape
    y = torch.empty_like(x)
    _rms_norm_kernel[(T,)](x, x, weight, y, y, H, x.stride(0), 0, 0, y.stride(0), float(eps), HAS_DELTA=False,
                           BLOCK_H=triton.next_power_of_2(H), num_warps=_num_warps(H), **pdl.launch(x))
    return y


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [T, H], delta [T, H]) -> (x + delta, rms_norm(x + delta)), both in x's dtype, in one pass."""
    _check(x, weight)
    if delta.shape != x.shape or delta.stride(1) != 1:
        raise ValueError(f"residual delta {tuple(delta.shape)} does not match x {tuple(x.shape)}")
    T, H = x.shape
    residual = torch.empty_like(x)
    y = torch.empty_like(x)
    _rms_norm_kernel[(T,)](x, delta, weight, residual, y, H, x.stride(0), delta.stride(0), residual.stride(0),
                           y.stride(0), float(eps), HAS_DELTA=True, BLOCK_H=triton.next_power_of_2(H),
                           num_warps=_num_warps(H), **pdl.launch(x))
    return residual, y


def embed_rms_norm(ids: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, eps: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T] (long) -> (the embedding rows [T, H] in ``dtype``, their RMSNorm) on ids' device, one launch. The
    table is on that device or, where a plan keeps it in RAM, in pinned host memory the GPU reads in place (one
    row, a few KB, a token)."""
    if not (ids.is_cuda or interpreting()):
        raise ValueError("the Triton embedding lookup needs CUDA tensors (or TRITON_INTERPRET=1)")
    if table.device != ids.device and not (ids.is_cuda and table.is_pinned()):
        raise ValueError(f"the embedding table must be on {ids.device} or in pinned host memory, not {table.device}")
    if ids.dim() != 1 or table.dim() != 2 or table.stride(1) != 1 or weight.shape != (table.shape[1],):
        raise ValueError(f"embed_rms_norm wants ids [T], a table [V, H] with contiguous rows and weight [H], got "
                         f"{tuple(ids.shape)}, {tuple(table.shape)} and {tuple(weight.shape)}")
    T, H = ids.shape[0], table.shape[1]
    x = torch.empty(T, H, dtype=dtype, device=ids.device)
    y = torch.empty_like(x)
    _embed_rms_norm_kernel[(T,)](ids, table, weight, x, y, H, table.stride(0), float(eps),
                                 BLOCK_H=triton.next_power_of_2(H), num_warps=_num_warps(H), **pdl.launch(ids))
    return x, y
