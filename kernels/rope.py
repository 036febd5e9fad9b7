"""RoPE on q and k, fused with the KV-cache write, for a decode step: the torch reference and a Triton kernel.

One launch replaces ~12 small ones (split, rotate-half for q and k, three cache writes) per layer and token, which
at batch 1 cost more than the bytes they move. Input is the fused QKV projection ``qkv [T, (Hq + 2*Hkv) * D]``;
output is the rotated q; rotated k, v and the positions go to cache slot ``slots[t]``, or, for a ring of ``slots``
slots (an int: the sliding layers' cache), to slot ``positions[t] % slots``, computed in the kernel (a decode step
then needs no modulo launch before its first layer). The rotation is YaRN's
(``cos``/``sin`` of ``positions * inv_freq`` times the concentration; half-split as in specs/gpt-oss-model.md §4.5),
computed in fp32 and rounded once (the reference rounds cos/sin to the activation dtype first, as OpenAI's does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .interpret import interpreting


def rope_qkv_cache_reference(qkv: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | int,
                             inv_freq: torch.Tensor, concentration: float, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             k_pos: torch.Tensor, n_q_heads: int) -> torch.Tensor:
    """-> q [T, Hq, D]; writes k_cache/v_cache [slots] ([S, Hkv, D]) and k_pos[slots] (``slots`` an int: a ring of
    that many slots, slot = position % slots)."""
    if isinstance(slots, int):
        slots = positions % slots
    T = qkv.shape[0]
    Hkv, D = k_cache.shape[1], k_cache.shape[2]
    q, k, v = qkv.split([n_q_heads * D, Hkv * D, Hkv * D], dim=-1)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    cos = (freqs.cos() * concentration)[:, None, :].to(qkv.dtype)
    sin = (freqs.sin() * concentration)[:, None, :].to(qkv.dtype)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    k_cache.index_copy_(0, slots, rotate(k.reshape(T, Hkv, D)))
    v_cache.index_copy_(0, slots, v.reshape(T, Hkv, D))
    k_pos.index_copy_(0, slots, positions)
    return rotate(q.reshape(T, n_q_heads, D))


@triton.jit
def _rope_qkv_kernel(qkv_ptr, pos_ptr, slot_ptr, inv_freq_ptr, q_ptr, k_ptr, v_ptr, kpos_ptr, stride_qkv,
                     concentration, RING, HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)
    t = tl.program_id(0)
    h = tl.program_id(1)  # q heads, then k heads, then v heads
    D: tl.constexpr = 2 * HALF
    offs = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + t)
    if RING > 0:  # a ring of RING slots
        slot = pos % RING
    else:
        slot = tl.load(slot_ptr + t)
    src = qkv_ptr + t * stride_qkv + h * D
    x1 = tl.load(src + offs).to(tl.float32)
    x2 = tl.load(src + HALF + offs).to(tl.float32)
    if h < HQ + HKV:
        freqs = pos.to(tl.float32) * tl.load(inv_freq_ptr + offs)
        cos = tl.cos(freqs) * concentration
        sin = tl.sin(freqs) * concentration
        o1 = x1 * cos - x2 * sin
        o2 = x2 * cos + x1 * sin
        if h < HQ:
            dst = q_ptr + (t * HQ + h) * D
        else:
            dst = k_ptr + (slot * HKV + (h - HQ)) * D
            if h == HQ:
                tl.store(kpos_ptr + slot, pos)
        tl.store(dst + offs, o1.to(q_ptr.dtype.element_ty))
        tl.store(dst + HALF + offs, o2.to(q_ptr.dtype.element_ty))
    else:
        dst = v_ptr + (slot * HKV + (h - HQ - HKV)) * D
        tl.store(dst + offs, x1.to(v_ptr.dtype.element_ty))
        tl.store(dst + HALF + offs, x2.to(v_ptr.dtype.element_ty))


def rope_qkv_cache(qkv: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor | int, inv_freq: torch.Tensor,
                   concentration: float, k_cache: torch.Tensor, v_cache: torch.Tensor, k_pos: torch.Tensor,
                   n_q_heads: int) -> torch.Tensor:
    """The Triton version of :func:`rope_qkv_cache_reference` (one launch, no host synchronisation)."""
    if not (qkv.is_cuda or interpreting()):
        raise ValueError("the Triton RoPE needs CUDA tensors (or TRITON_INTERPRET=1); use the reference")
    T = qkv.shape[0]
    Hkv, D = k_cache.shape[1], k_cache.shape[2]
    if D % 2 or (D // 2) & (D // 2 - 1) or qkv.shape[1] != (n_q_heads + 2 * Hkv) * D or qkv.stride(1) != 1 \
            or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError(f"rope_qkv_cache shapes disagree: qkv {tuple(qkv.shape)}, cache {tuple(k_cache.shape)}")
    q = torch.empty(T, n_q_heads, D, dtype=qkv.dtype, device=qkv.device)
    ring = slots if isinstance(slots, int) else 0
    _rope_qkv_kernel[(T, n_q_heads + 2 * Hkv)](qkv, positions, positions if ring else slots, inv_freq, q, k_cache,
                                               v_cache, k_pos, qkv.stride(0), float(concentration), ring,
                                               HQ=n_q_heads, HKV=Hkv, HALF=D // 2, num_warps=1, **pdl.launch(qkv))
    return q
