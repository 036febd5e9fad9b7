"""MXFP4 mixture-of-experts block: the torch reference and the Triton kernels (decode GEMV, prefill grouped GEMM).

The math (specs/gpt-oss-model.md §4.6): router logits ``x @ W^T + b``, ``torch.topk`` (sorted), softmax over the k
selected logits; per selected expert the gate_up projection (rows interleave gate 2j / up 2j+1) plus bias, the
clamped SwiGLU, the down projection plus bias, weighted by the routing weight and summed over the k experts.

Precision: router logits, biases and every accumulation across groups in fp32 (so a near tie between two logits
ranks the same way on every path), and the SwiGLU output ``h`` rounded to the activation dtype, because the kernels
hand it from the gate_up kernel to the down kernel in that dtype (as OpenAI's Triton path does). The result is cast
to the activation dtype once, after the weighted sum. One exception, for speed: with bf16/fp16 activations the
decode GEMVs sum each 32-element group in fp16 (see "fp16x2 decode GEMV" below; ~6e-4 relative per GEMV, a few
times smaller than bf16's rounding); with fp32 activations they are exact fp32, like the prefill GEMMs.

MXFP4 is decoded in registers, never into a dense copy. A 4-bit code ``c`` (sign, 2 exponent bits, 1 mantissa bit)
becomes an fp32 bit pattern with two shifts and a mask: ``((c << 28) >> 6) & 0x81C00000`` puts the sign in bit 31
and the magnitude bits at 22..24, which reads as ``fp4(c) * 2**-126`` exactly (the code for 0.5 lands on an fp32
subnormal; these kernels compile to plain, non-flushing fp32 multiply and add). The decode GEMVs read the blocks as
int32 words and decode the 8 codes of a word in place; they multiply x by 2**100 (the gate_up kernel stores h
already multiplied), so every product is a normal fp32, and each 32-element group's sum is scaled once by
``2**(s - 101)``. The prefill GEMMs multiply the decoded tile by 2**126 and by the group scale, then feed tl.dot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import mxfp4, norm, pdl
from .interpret import dot_dtype, interpreting

# At or below this many tokens the decode path (GEMVs over each token's k experts) runs; above it, grouped GEMMs.
DECODE_MAX_TOKENS = 4
_GROUP = mxfp4.BLOCK  # 32 elements share one scale
_BYTES = mxfp4.BLOCK // 2  # 16 packed bytes per group
_SIGN_AND_MAGNITUDE = tl.constexpr(-2118123520)  # 0x81C00000 as a signed int32
_SIGN_BIT = tl.constexpr(-2147483648)  # 0x80000000
_TWO_POW_126 = tl.constexpr(2.0**126)
_X_PRESCALE = tl.constexpr(2.0**100)  # GEMV: x * 2**100 keeps fp4 * 2**-126 * x normal; block scales give back 2**26
_F16_MAGNITUDE = tl.constexpr(0x0E000E00)  # fp16x2 decode: the 3 magnitude bits of a code at bits 9..11 of a lane
_F16_SIGN = tl.constexpr(-2147450880)  # 0x80008000 as a signed int32: the sign bit of each lane
_F16_PAIR = tl.constexpr(-1912566272)  # 0x8E008E00: magnitude and sign bits of both lanes


# ---------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------


def route(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
          top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T,H] -> (expert ids int32 [T,k] in descending logit order, routing weights fp32 [T,k])."""
    logits = x.float() @ router_weight.float().T + router_bias.float()
    values, ids = torch.topk(logits, top_k, dim=-1, sorted=True)
    return ids.to(torch.int32), torch.softmax(values, dim=-1)


def swiglu_reference(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU over interleaved columns (gate even, up odd)."""
    gate = gate_up[..., 0::2].clamp(max=limit)
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_reference(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
                  gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                  down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
                  top_k: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Plain torch: dequantizes only the experts some token uses (one at a time), fp32 math."""
    ids, weights = route(x, router_weight, router_bias, top_k)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in ids.unique().tolist():
        tok, slot = torch.where(ids == e)
        w1 = mxfp4.dequantize(gate_up_blocks[e], gate_up_scales[e], torch.float32)
        gate_up = x[tok].float() @ w1.T + gate_up_bias[e].float()
        h = swiglu_reference(gate_up, alpha, limit).to(x.dtype).float()
        w2 = mxfp4.dequantize(down_blocks[e], down_scales[e], torch.float32)
        y = h @ w2.T + down_bias[e].float()
        out.index_add_(0, tok, y * weights[tok, slot, None])
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Shared Triton pieces
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _e2m1_times_2pow_m126(packed):
    """uint8 bytes -> (low nibble, high nibble) as fp32 ``fp4 * 2**-126`` (see the module docstring).

    The byte is sign-extended first, so the high nibble's sign already fills bits 8..31: one shift and one mask
    place it. The low nibble is shifted to the top and back (arithmetic) to replicate its sign bit.
    """
    b = packed.to(tl.int8, bitcast=True).to(tl.int32)
    lo = ((b << 28) >> 6) & _SIGN_AND_MAGNITUDE
    hi = (b << 18) & _SIGN_AND_MAGNITUDE
    return lo.to(tl.float32, bitcast=True), hi.to(tl.float32, bitcast=True)


@triton.jit
def _pow2(biased_exponent):
    """int32 biased exponent (1..254) -> fp32 ``2**(e - 127)``; 0 gives 0.0 in place of a subnormal."""
    return (biased_exponent << 23).to(tl.float32, bitcast=True)


@triton.jit
def _code_f32(w, E: tl.constexpr, PAIRED: tl.constexpr):
    """int32 words -> code E (element E of each word's 8) as fp32 ``fp4 * 2**-126``: sign to bit 31, magnitude to
    bits 22..24. Checkpoint layout: code E at bits 4E..4E+3. PAIRED: taken from the fp16 lane ``_f16x2_codes``
    builds (the one place that knows where the paired layout keeps each code)."""
    if PAIRED:
        r = _f16x2_codes(w, E % 4, True)
        if E < 4:  # low lane: magnitude 9..11, sign 15
            v = ((r << 13) & 0x01C00000) | ((r << 16) & _SIGN_BIT)
        else:  # high lane: magnitude 25..27, sign 31
            v = ((r >> 3) & 0x01C00000) | (r & _SIGN_BIT)
    elif E == 7:
        v = (w >> 6) & _SIGN_AND_MAGNITUDE
    else:
        v = ((w << (28 - 4 * E)) >> 6) & _SIGN_AND_MAGNITUDE
    return v.to(tl.float32, bitcast=True)


@triton.jit
def _split8(x8):
    """[..., 8] -> eight [...] tensors, x8[..., c] in position c (splits of in-register dims cost nothing)."""
    ev, od = tl.split(tl.reshape(x8, [x8.shape[0], x8.shape[1], 4, 2]))
    e04, e26 = tl.split(tl.reshape(ev, [x8.shape[0], x8.shape[1], 2, 2]))
    o15, o37 = tl.split(tl.reshape(od, [x8.shape[0], x8.shape[1], 2, 2]))
    x0, x4 = tl.split(e04)
    x2, x6 = tl.split(e26)
    x1, x5 = tl.split(o15)
    x3, x7 = tl.split(o37)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _row_slice(ptr, stride_k, k_mask, cols, n, SHARED_X: tl.constexpr, K_PAD: tl.constexpr):
    """Columns ``cols`` (< n) of the GEMV input: one shared row [1, m], or one row per expert [K_PAD, m]."""
    if SHARED_X:
        v = tl.load(ptr + cols, mask=cols < n, other=0)[None, :]
    else:
        v = tl.load(ptr + tl.arange(0, K_PAD)[:, None] * stride_k + cols[None, :],
                    mask=k_mask[:, None] & (cols < n)[None, :], other=0)
    return v


@triton.jit
def _weight_tile(blk_rows, scl_rows, tile_mask, g0, G, BLOCK_G: tl.constexpr):
    """The packed words [K, N, BLOCK_G*4] and scales [K, N, BLOCK_G] of groups g0.. of every row in the tile;
    past the end the masks turn the loads off."""
    cols = g0 * 4 + tl.arange(0, BLOCK_G * 4)
    gs = g0 + tl.arange(0, BLOCK_G)
    words = tl.load(blk_rows[:, :, None] + cols[None, None, :],
                    mask=tile_mask[:, :, None] & (cols < G * 4)[None, None, :], other=0)
    s = tl.load(scl_rows[:, :, None] + gs[None, None, :],
                mask=tile_mask[:, :, None] & (gs < G)[None, None, :], other=0)
    return words, s


@triton.jit
def _mxfp4_gemv(x_ptr, x_stride_k, words_ptr, scl_ptr, experts, k_mask, rows, row_mask, R, G, G_LOOP,
                SHARED_X: tl.constexpr, X_PRESCALED: tl.constexpr,
                K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, PAIRED: tl.constexpr,
                WAIT: tl.constexpr = False):
    """acc[j, n] = sum_k W_{experts[j]}[rows[n], k] * x_j[k], fp32 [K_PAD, BLOCK_N], for the k experts of one token.

    ``words_ptr`` is an [E, R, G*4] int32 view of the blocks (4 words per 32-element group, 8 codes per word, little
    endian: byte i of a word holds elements 2i and 2i+1; PAIRED: the paired layout), ``scl_ptr`` the [E, R, G]
    scales. x_j is the row
    ``x_ptr + j * x_stride_k`` (one shared row with SHARED_X), already multiplied by 2**100 with X_PRESCALED.
    Only the first G_LOOP groups of each row are summed (G_LOOP < G: the rest of the row is another worker's).

    Tile [K_PAD experts, BLOCK_N rows, BLOCK_G*4 words]: all experts' bytes are in flight together, a thread owns
    whole groups (one 16-byte load) and reuses its slice of x across the rows and experts it holds, decodes each
    word with shifts and masks in place, reduces each group in registers and applies the group's scale once.
    Cross-thread reductions happen once, after the loop.
    """
    W: tl.constexpr = BLOCK_G * 4
    acc = tl.zeros([K_PAD, BLOCK_N, BLOCK_G], dtype=tl.float32)
    offs_x = tl.arange(0, W * 8)
    e64 = experts.to(tl.int64)
    blk_rows = words_ptr + ((e64 * R)[:, None] + rows[None, :]) * (G * 4)
    scl_rows = scl_ptr + ((e64 * R)[:, None] + rows[None, :]) * G
    tile_mask = k_mask[:, None] & row_mask[None, :]
    # Software prefetch: the next tile is in flight while this one is decoded (the loads feed no tl.dot, so
    # Triton's pipeliner leaves them alone).
    words, s = _weight_tile(blk_rows, scl_rows, tile_mask, 0, G_LOOP, BLOCK_G)
    pdl.wait_only(WAIT)  # see _mxfp4_gemv_f16x2
    xv = _row_slice(x_ptr, x_stride_k, k_mask, offs_x, G_LOOP * 32, SHARED_X, K_PAD).to(tl.float32)
    for g0 in range(0, G_LOOP, BLOCK_G):
        words_next, s_next = _weight_tile(blk_rows, scl_rows, tile_mask, g0 + BLOCK_G, G_LOOP, BLOCK_G)
        # x is prefetched too: a load issued only where it is used puts an L2 round trip into every iteration.
        xv_next = _row_slice(x_ptr, x_stride_k, k_mask, (g0 + BLOCK_G) * 32 + offs_x, G_LOOP * 32, SHARED_X,
                             K_PAD).to(tl.float32)
        if not X_PRESCALED:
            xv = xv * _X_PRESCALE
        x0, x1, x2, x3, x4, x5, x6, x7 = _split8(tl.reshape(xv, [xv.shape[0], W, 8]))
        part = _code_f32(words, 0, PAIRED) * x0[:, None, :]
        part += _code_f32(words, 1, PAIRED) * x1[:, None, :]
        part += _code_f32(words, 2, PAIRED) * x2[:, None, :]
        part += _code_f32(words, 3, PAIRED) * x3[:, None, :]
        part += _code_f32(words, 4, PAIRED) * x4[:, None, :]
        part += _code_f32(words, 5, PAIRED) * x5[:, None, :]
        part += _code_f32(words, 6, PAIRED) * x6[:, None, :]
        part += _code_f32(words, 7, PAIRED) * x7[:, None, :]
        part = tl.sum(tl.reshape(part, [K_PAD, BLOCK_N, BLOCK_G, 4]), axis=3)
        acc += part * _pow2(s.to(tl.int32) + 26)  # 2**(s-127) * 2**126 / 2**100
        words = words_next
        s = s_next
        xv = xv_next
    return tl.sum(acc, axis=2)


# fp16x2 decode GEMV (bf16/fp16 activations on a GPU). The fp32 GEMV above spends ~5.4 instructions per weight
# (measured: issue-bound at 0.62 warps/cycle/scheduler). Here two codes are decoded per 32-bit operation into an
# fp16x2 register and multiplied-added as a pair (fma.rn.f16x2): ~2.8 instructions per weight. A code at bits
# 4i..4i+3 and the one 16 bits above it (elements i and i+4 of a word) need the same shifts: magnitude bits to
# 9..11 of their lane and the sign to bit 15, which reads as the fp16 ``fp4 * 2**-14`` (0.5 is an fp16 subnormal;
# f16x2 arithmetic keeps subnormals). x is multiplied by a power of two so that its largest element is below 2**15:
# products stay <= 12 and the 16 terms a lane sums per 32-element group stay far from fp16's limit, while small
# elements keep their bits. Each group's fp16 sum (11 significant bits, exact products) goes to fp32 once, times the
# group scale; groups are summed in fp32. x arrives already packed as fp16 pairs in that order, written once per token
# (by the router kernel for gate_up, by the gate_up kernel's epilogue for down), so the loop converts nothing.
# Measured on an H200 at the 20b shape: 36.9 -> 29.7 us per layer for the three decode kernels.


@triton.jit
def _f16x2_codes(q, I: tl.constexpr, PAIRED: tl.constexpr):
    """int32 words -> fp16x2 bit patterns (in an int32) of codes I (low lane) and I + 4 (high lane). The checkpoint
    layout takes 3-4 instructions a pair; the paired layout 1, 2, 4, 4 (kernels/mxfp4.py)."""
    if PAIRED:
        if I == 0:
            r = q & _F16_PAIR
        elif I == 1:
            r = (q << 3) & _F16_PAIR
        elif I == 2:
            r = ((q << 9) & _F16_MAGNITUDE) | ((q << 2) & _F16_SIGN)
        else:
            r = ((q << 6) & _F16_MAGNITUDE) | ((q << 1) & _F16_SIGN)
    elif I == 3:
        r = ((q >> 3) & _F16_MAGNITUDE) | (q & _F16_SIGN)
    else:
        r = ((q << (9 - 4 * I)) & _F16_MAGNITUDE) | ((q << (12 - 4 * I)) & _F16_SIGN)
    return r


@triton.jit
def _f16_bits(v):
    """fp32 -> its fp16 bit pattern in the low 16 bits of an int32."""
    return v.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _f16_lane(v, HIGH: tl.constexpr):
    """One lane of fp16x2 bit patterns (int32) as fp32."""
    if HIGH:
        v = v >> 16
    return v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _fma_f16x2(a, b, c, ASM: tl.constexpr):
    """a * b + c per fp16 lane of int32 bit patterns: one ``fma.rn.f16x2`` on a GPU. Triton's CPU interpreter runs
    no inline PTX, so there the same lanes are computed in fp32 and rounded to fp16 (the product of two fp16 values
    is exact in fp32; only the sum can round twice, in rare ties)."""
    if ASM:
        r = tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32,
                                      is_pure=True, pack=1)
    else:
        lo = _f16_lane(a, False) * _f16_lane(b, False) + _f16_lane(c, False)
        hi = _f16_lane(a, True) * _f16_lane(b, True) + _f16_lane(c, True)
        r = _f16_bits(lo) | (_f16_bits(hi) << 16)
    return r


@triton.jit
def _mul_f16x2(a, b, ASM: tl.constexpr):
    """a * b per fp16 lane (``mul.rn.f16x2``): a group's first product, so its sum needs no zeroed register."""
    if ASM:
        r = tl.inline_asm_elementwise("mul.rn.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                      pack=1)
    else:
        r = _f16_bits(_f16_lane(a, False) * _f16_lane(b, False)) | (_f16_bits(_f16_lane(a, True) *
                                                                           _f16_lane(b, True)) << 16)
    return r


@triton.jit
def _split4(x):
    """[A, B, C, 4] -> four [A, B, C] tensors, x[..., j] in position j."""
    ev, od = tl.split(tl.reshape(x, [x.shape[0], x.shape[1], x.shape[2], 2, 2]))
    x0, x2 = tl.split(ev)
    x1, x3 = tl.split(od)
    return x0, x1, x2, x3


@triton.jit
def _split4_3d(x):
    """[A, B, 4] -> four [A, B] tensors, x[..., j] in position j."""
    ev, od = tl.split(tl.reshape(x, [x.shape[0], x.shape[1], 2, 2]))
    x0, x2 = tl.split(ev)
    x1, x3 = tl.split(od)
    return x0, x1, x2, x3


@triton.jit
def _word_fma(q, a0, a1, a2, a3, part, FIRST: tl.constexpr, PAIRED: tl.constexpr, ASM: tl.constexpr):
    """part += the 8 codes of words q [K, N, G] times their x pairs a_i [XK, G] (codes i and i + 4); FIRST: part
    starts here (no addend)."""
    if FIRST:
        part = _mul_f16x2(_f16x2_codes(q, 0, PAIRED), a0[:, None, :], ASM)
    else:
        part = _fma_f16x2(_f16x2_codes(q, 0, PAIRED), a0[:, None, :], part, ASM)
    part = _fma_f16x2(_f16x2_codes(q, 1, PAIRED), a1[:, None, :], part, ASM)
    part = _fma_f16x2(_f16x2_codes(q, 2, PAIRED), a2[:, None, :], part, ASM)
    return _fma_f16x2(_f16x2_codes(q, 3, PAIRED), a3[:, None, :], part, ASM)


@triton.jit
def _pack_pairs(v):
    """fp32 [A, 8m] -> fp16x2 words [A, 4m]: for each 8 elements, the pairs (i, i + 4) for i = 0..3, in order."""
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(tl.reshape(v, [v.shape[0], v.shape[1] // 8, 8]))
    lo = tl.join(tl.join(_f16_bits(x0), _f16_bits(x2)), tl.join(_f16_bits(x1), _f16_bits(x3)))
    hi = tl.join(tl.join(_f16_bits(x4), _f16_bits(x6)), tl.join(_f16_bits(x5), _f16_bits(x7)))
    return tl.reshape(lo | (hi << 16), [v.shape[0], v.shape[1] // 2])


@triton.jit
def _f16x2_tile(acc, words, s, xp, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                PAIRED: tl.constexpr, ASM: tl.constexpr):
    """acc += one tile's groups: words [K_PAD, BLOCK_N, BLOCK_G * 4], scales s (same shape / 4), x pairs xp
    [XK, BLOCK_G * 16]. Each group's fp16 sum is scaled by 2**(s - 127) here; the GEMV applies the token's power of
    two once, at the end."""
    W: tl.constexpr = BLOCK_G * 4
    # x pair i of weight word j of each group: a{i}{j} [XK, BLOCK_G]; weight word j: q{j} [K_PAD, BLOCK_N, BLOCK_G]
    ev, od = tl.split(tl.reshape(xp, [xp.shape[0], W, 2, 2]))
    a0, a2 = tl.split(ev)
    a1, a3 = tl.split(od)
    a00, a01, a02, a03 = _split4_3d(tl.reshape(a0, [xp.shape[0], BLOCK_G, 4]))
    a10, a11, a12, a13 = _split4_3d(tl.reshape(a1, [xp.shape[0], BLOCK_G, 4]))
    a20, a21, a22, a23 = _split4_3d(tl.reshape(a2, [xp.shape[0], BLOCK_G, 4]))
    a30, a31, a32, a33 = _split4_3d(tl.reshape(a3, [xp.shape[0], BLOCK_G, 4]))
    q0, q1, q2, q3 = _split4(tl.reshape(words, [K_PAD, BLOCK_N, BLOCK_G, 4]))
    part = _word_fma(q0, a00, a10, a20, a30, 0, True, PAIRED, ASM)  # one group's sum per fp16 lane
    part = _word_fma(q1, a01, a11, a21, a31, part, False, PAIRED, ASM)
    part = _word_fma(q2, a02, a12, a22, a32, part, False, PAIRED, ASM)
    part = _word_fma(q3, a03, a13, a23, a33, part, False, PAIRED, ASM)
    group = _f16_lane(part, False) + _f16_lane(part, True)
    return acc + group * _pow2(s.to(tl.int32))


@triton.jit
def _mxfp4_gemv_f16x2(x2_ptr, x2_stride_k, x_exp, words_ptr, scl_ptr, experts, k_mask, rows, row_mask, R, G,
                      G_LOOP, SHARED_X: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                      PAIRED: tl.constexpr, ASM: tl.constexpr, WAIT: tl.constexpr = False):
    """Same contract as ``_mxfp4_gemv``, decoded and multiplied as fp16 pairs. x comes packed by ``_pack_pairs``
    (4 int32 words per weight word), multiplied by ``2**x_exp`` before it was rounded to fp16. WAIT: the grid
    dependency wait (kernels/pdl.py) comes here, after the first weight tile is requested and before x is read."""
    acc = tl.zeros([K_PAD, BLOCK_N, BLOCK_G], dtype=tl.float32)
    offs_p = tl.arange(0, BLOCK_G * 16)
    e64 = experts.to(tl.int64)
    blk_rows = words_ptr + ((e64 * R)[:, None] + rows[None, :]) * (G * 4)
    scl_rows = scl_ptr + ((e64 * R)[:, None] + rows[None, :]) * G
    tile_mask = k_mask[:, None] & row_mask[None, :]
    words, s = _weight_tile(blk_rows, scl_rows, tile_mask, 0, G_LOOP, BLOCK_G)
    pdl.wait_only(WAIT)
    xp = _row_slice(x2_ptr, x2_stride_k, k_mask, offs_p, G_LOOP * 16, SHARED_X, K_PAD)
    for g0 in range(0, G_LOOP, BLOCK_G):
        words_next, s_next = _weight_tile(blk_rows, scl_rows, tile_mask, g0 + BLOCK_G, G_LOOP, BLOCK_G)
        xp_next = _row_slice(x2_ptr, x2_stride_k, k_mask, (g0 + BLOCK_G) * 16 + offs_p, G_LOOP * 16, SHARED_X,
                             K_PAD)
        acc = _f16x2_tile(acc, words, s, xp, K_PAD, BLOCK_N, BLOCK_G, PAIRED, ASM)
        words = words_next
        s = s_next
        xp = xp_next
    # the fp16 partial sums are fp4 * 2**-14 * x * 2**x_exp
    return tl.sum(acc, axis=2) * _pow2(14 - x_exp + 127)


@triton.jit
def _swiglu(gate, up, alpha, limit):
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    return gate * tl.sigmoid(alpha * gate) * (up + 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Decode: router logits; gate_up GEMV with top-k + SwiGLU; down GEMV with the weighted sum over k. Each GEMV
# program covers all k experts of its token, so their weight bytes stream in together.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _top_k(logits_row, E, TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr):
    """One token's routing from its fp32 logits: expert ids [K_PAD] by repeated argmax (descending; ties go to the
    lower index) and the softmax over the k selected logits (0 past TOP_K)."""
    offs_e = tl.arange(0, E_PAD)
    offs_k = tl.arange(0, K_PAD)
    # from L2 (.cg): the down kernel reads them before its grid dependency wait (the router grid has completed)
    vals = tl.load(logits_row + offs_e, mask=offs_e < E, other=float("-inf"), cache_modifier=".cg")
    top = tl.max(vals, axis=0)
    experts = tl.zeros([K_PAD], dtype=tl.int32)
    probs = tl.zeros([K_PAD], dtype=tl.float32)
    for i in tl.static_range(TOP_K):
        idx = tl.argmax(vals, axis=0)
        experts = tl.where(offs_k == i, idx, experts)
        probs = tl.where(offs_k == i, tl.exp(tl.max(vals, axis=0) - top), probs)
        vals = tl.where(offs_e == idx, float("-inf"), vals)
    return experts, probs / tl.sum(probs, axis=0)


@triton.jit
def _router_logits_kernel(x_ptr, delta_ptr, norm_w_ptr, res_ptr, t_ptr, eps, w_ptr, b_ptr, logits_ptr, x_exp_ptr,
                          x2_ptr, H, E, stride_x,
                          BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, F16X2: tl.constexpr, HAS_NORM: tl.constexpr,
                          PDL: tl.constexpr):
    """logits[t, e] = x[t] . W[e] + b[e] in fp32; BLOCK_H covers the whole row, so every load is in flight at once
    (the router is ~0.2 MB: latency, not bandwidth, is its cost). With F16X2 also, for the fp16x2 gate_up GEMV,
    x_exp[t] (the power of two that brings max |x[t]| below 2**15) and x[t] times it as fp16 pairs (x2).

    HAS_NORM: the residual add and the MoE's RMSNorm happen here too (as kernels/norm.py's add_rms_norm: residual
    rounded to the activation dtype, statistics in fp32, output rounded), and x is that norm's output: one launch
    instead of two per layer. Every program normalises the row (2880 elements); program 0 stores it.

    The router weights, bias and norm weight are never written: they are requested before the wait for the previous
    kernel (after letting the next one launch), so their latency hides behind that kernel's tail."""
    t = tl.program_id(0)
    es = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = es < E
    hs = tl.arange(0, BLOCK_H)
    h_mask = hs < H
    pdl.signal(PDL)
    w = tl.load(w_ptr + es[:, None] * H + hs[None, :], mask=e_mask[:, None] & h_mask[None, :], other=0.0)
    b = tl.load(b_ptr + es, mask=e_mask, other=0.0)
    if HAS_NORM:
        norm_w = tl.load(norm_w_ptr + hs, mask=h_mask, other=0.0)
    pdl.wait_only(PDL)
    if HAS_NORM:
        row = tl.load(x_ptr + t * stride_x + hs, mask=h_mask, other=0.0).to(tl.float32)
        row += tl.load(delta_ptr + t * H + hs, mask=h_mask, other=0.0).to(tl.float32)
        row = row.to(res_ptr.dtype.element_ty)
        rf = row.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(rf * rf, axis=0) / H + eps)
        normed = (rf * inv * norm_w.to(tl.float32))
        normed = normed.to(t_ptr.dtype.element_ty)
        if tl.program_id(1) == 0:
            tl.store(res_ptr + t * H + hs, row, mask=h_mask)
            tl.store(t_ptr + t * H + hs, normed, mask=h_mask)
        xv = normed.to(tl.float32)
    else:
        xv = tl.load(x_ptr + t * stride_x + hs, mask=h_mask, other=0.0).to(tl.float32)
    logits = tl.sum(w.to(tl.float32) * xv[None, :], axis=1)
    logits += b.to(tl.float32)
    tl.store(logits_ptr + t * E + es, logits, mask=e_mask)
    if F16X2:
        if tl.program_id(1) == 0:
            amax_exp = ((tl.max(tl.abs(xv), axis=0).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2)
            x_exp = tl.minimum(tl.maximum(14 - amax_exp, -100), 100)
            tl.store(x_exp_ptr + t, x_exp)
            pairs = _pack_pairs(xv[None, :] * _pow2(x_exp + 127))
            ps = tl.arange(0, BLOCK_H // 2)
            tl.store(x2_ptr + t * (H // 2) + ps[None, :], pairs, mask=(ps < H // 2)[None, :])


@triton.jit
def _gate_up_decode_kernel(x_ptr, logits_ptr, x_exp_ptr, x2_ptr, ids_ptr, wts_ptr, words_ptr, scl_ptr, bias_ptr,
                           h_ptr, E, H, I, n_rows, stride_x, alpha, limit, h_exp,
                           TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, EXPERTS: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, F16X2: tl.constexpr, PAIRED: tl.constexpr,
                           ASM: tl.constexpr, PDL: tl.constexpr):
    """One program: BLOCK_N interleaved gate_up rows (of the first ``n_rows``) of EXPERTS of token t's TOP_K experts
    (the ``program_id(2)``-th slice of its selections; all of them with EXPERTS = K_PAD).
    h is rounded to the activation dtype, then stored for the down GEMV: times 2**h_exp as fp16 pairs (F16X2;
    BLOCK_N a multiple of 16), else times 2**100 (exact in bf16 and fp32), the prescale the fp32 GEMV wants."""
    pdl.wait(PDL)
    t = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_e = tl.program_id(2)
    offs_k = tl.arange(0, K_PAD)
    chosen, weights = _top_k(logits_ptr + t * E, E, TOP_K, K_PAD, E_PAD)
    first = offs_k + (pid_n + pid_e) * TOP_K < TOP_K  # the k selections, written once (by the first program)
    tl.store(ids_ptr + t * TOP_K + offs_k, chosen, mask=first)
    tl.store(wts_ptr + t * TOP_K + offs_k, weights, mask=first)
    slot = pid_e * EXPERTS + tl.arange(0, EXPERTS)  # which of the k selections this program computes
    k_mask = slot < TOP_K
    experts = tl.sum(tl.where(offs_k[None, :] == slot[:, None], chosen[None, :], 0), axis=1)

    N2 = 2 * I
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    if F16X2:
        acc = _mxfp4_gemv_f16x2(x2_ptr + t * (H // 2), 0, tl.load(x_exp_ptr + t), words_ptr, scl_ptr, experts,
                                k_mask, rows, row_mask, N2, H // 32, H // 32, True, EXPERTS, BLOCK_N, BLOCK_G, PAIRED,
                                ASM)
    else:
        acc = _mxfp4_gemv(x_ptr + t * stride_x, 0, words_ptr, scl_ptr, experts, k_mask, rows, row_mask, N2,
                          H // 32, H // 32, True, False, EXPERTS, BLOCK_N, BLOCK_G, PAIRED)
    bias = tl.load(bias_ptr + experts.to(tl.int64)[:, None] * N2 + rows[None, :],
                   mask=k_mask[:, None] & row_mask[None, :], other=0.0)
    gate, up = tl.split(tl.reshape(acc + bias.to(tl.float32), [EXPERTS, BLOCK_N // 2, 2]))
    h = _swiglu(gate, up, alpha, limit)
    cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    h = h.to(x_ptr.dtype.element_ty).to(tl.float32)  # rounded to the activation dtype, as on every path
    if F16X2:
        pairs = _pack_pairs(h * _pow2(h_exp + 127))  # [EXPERTS, BLOCK_N // 4]
        pcols = pid_n * (BLOCK_N // 4) + tl.arange(0, BLOCK_N // 4)
        tl.store(h_ptr + (t * TOP_K + slot)[:, None] * (I // 2) + pcols[None, :], pairs,
                 mask=k_mask[:, None] & (pcols < I // 2)[None, :])
    else:
        tl.store(h_ptr + (t * TOP_K + slot)[:, None] * I + cols[None, :], (h * _X_PRESCALE).to(h_ptr.dtype.element_ty),
                 mask=k_mask[:, None] & (cols < I)[None, :])


@triton.jit
def _down_decode_kernel(h_ptr, ids_ptr, wts_ptr, logits_ptr, words_ptr, scl_ptr, bias_ptr, out_ptr, E, H, I, g_loop,
                        h_exp, x_ptr, norm_w_ptr, res_ptr, t_ptr, count_ptr, eps,
                        TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_G: tl.constexpr, F16X2: tl.constexpr, PAIRED: tl.constexpr, ASM: tl.constexpr,
                        HAS_NORM: tl.constexpr, ROUTE: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    """One program: BLOCK_N output columns of token t, summed over its TOP_K experts in registers (no atomics).
    ``h_exp``: the fp16x2 GEMV's power of two for h, from the SwiGLU's bound (|h| <= limit * (limit + 1)).
    ``g_loop``: how many of the I/32 groups of h to sum (fewer when a CPU worker sums the rest).

    ROUTE: the experts and weights come from the router's logits, as the gate_up kernel picks them, not from
    ``ids``/``wts``: the router grid has completed before this one is launched (the gate_up kernel signals after
    its wait), so this program lets the next kernel launch, picks its experts, requests its first weight tile and
    only then waits for the gate_up kernel's h. That tile's memory latency leaves the critical path.

    HAS_NORM: the layer's residual add and the next RMSNorm follow in the same launch. Each program counts itself
    done on token t's counter (release after a barrier over its stores, as a semaphore does); the last one adds
    the whole output row to the residual x, normalises it (norm.add_rms_norm_row) and resets the counter."""
    t = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < H
    offs_k = tl.arange(0, K_PAD)
    k_mask = offs_k < TOP_K
    if ROUTE:
        pdl.signal(PDL)
        experts, weights = _top_k(logits_ptr + t * E, E, TOP_K, K_PAD, E_PAD)
    else:
        pdl.wait(PDL)
        experts = tl.load(ids_ptr + t * TOP_K + offs_k, mask=k_mask, other=0)
        weights = tl.load(wts_ptr + t * TOP_K + offs_k, mask=k_mask, other=0.0)
    if F16X2:
        acc = _mxfp4_gemv_f16x2(h_ptr + t * TOP_K * (I // 2), I // 2, h_exp, words_ptr, scl_ptr, experts, k_mask,
                                rows, row_mask, H, I // 32, g_loop, False, K_PAD, BLOCK_N, BLOCK_G, PAIRED, ASM,
                                ROUTE and PDL)
    else:
        acc = _mxfp4_gemv(h_ptr + t * TOP_K * I, I, words_ptr, scl_ptr, experts, k_mask, rows, row_mask, H, I // 32,
                          g_loop, False, True, K_PAD, BLOCK_N, BLOCK_G, PAIRED, ROUTE and PDL)
    bias = tl.load(bias_ptr + experts.to(tl.int64)[:, None] * H + rows[None, :],
                   mask=k_mask[:, None] & row_mask[None, :], other=0.0)
    out = tl.sum((acc + bias.to(tl.float32)) * weights[:, None], axis=0)
    tl.store(out_ptr + t * H + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)
    if HAS_NORM:
        tl.debug_barrier()  # every thread's stores come before the release below
        done = tl.atomic_add(count_ptr + t, 1, sem="acq_rel", scope="gpu")
        if done == tl.num_programs(1) - 1:
            norm.add_rms_norm_row(x_ptr + t * H, out_ptr + t * H, norm_w_ptr, res_ptr + t * H, t_ptr + t * H, H, eps,
                                  BLOCK_H)
            tl.store(count_ptr + t, 0)


# ---------------------------------------------------------------------------------------------------------------
# Decode with a CPU share: a layer whose experts live in pinned host RAM hands the intermediate columns
# [split, I) of its k routed experts to a CPU worker (engine/cpu_share.py) through pinned, device-visible buffers,
# inside the same CUDA graph: the GPU publishes the token's routing and input, computes columns [0, split) reading
# the experts in place over PCIe, then waits for the CPU's sum and ends the layer. The down projection is a sum over
# the intermediate columns, so the two halves add up to the whole MoE output.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _store_release(ptr, value, ASM: tl.constexpr):
    """Make this program's earlier stores visible to the host, then store ``value`` (a flag the host polls). Every
    thread fences its own stores before the barrier, so no thread's flag store can overtake another's data."""
    if ASM:
        tl.inline_asm_elementwise("fence.acq_rel.sys;\n\tmov.b32 $0, $1;", "=r,r", [value], dtype=tl.int32,
                                  is_pure=False, pack=1)
    tl.debug_barrier()
    if ASM:
        tl.inline_asm_elementwise("st.relaxed.sys.global.b32 [$1], $2;\n\tmov.b32 $0, 0;", "=r,l,r", [ptr, value],
                                  dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.store(ptr, value)


@triton.jit
def _load_acquire(ptr, ASM: tl.constexpr):
    """A flag the host writes, read from memory every time; later loads see what the host stored before it."""
    if ASM:
        v = tl.inline_asm_elementwise("ld.acquire.sys.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                      is_pure=False, pack=1)
    else:
        v = tl.load(ptr, volatile=True)
    return v


@triton.jit
def _publish_kernel(logits_ptr, t_ptr, seq_ptr, flag_ptr, ids_ptr, wts_ptr, xs_ptr, slot, E, H,
                    TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_H: tl.constexpr,
                    ASM: tl.constexpr, PDL: tl.constexpr):
    """One program, one token: the routing (as the gate_up kernel computes it), the MoE input as fp32 even/odd
    halves, then the request's sequence number into the host's flag."""
    pdl.wait(PDL)
    offs_k = tl.arange(0, K_PAD)
    experts, weights = _top_k(logits_ptr, E, TOP_K, K_PAD, E_PAD)
    tl.store(ids_ptr + slot * TOP_K + offs_k, experts, mask=offs_k < TOP_K)
    tl.store(wts_ptr + slot * TOP_K + offs_k, weights, mask=offs_k < TOP_K)
    half = tl.arange(0, BLOCK_H // 2)
    m = half < H // 2
    tl.store(xs_ptr + slot * H + half, tl.load(t_ptr + 2 * half, mask=m, other=0.0).to(tl.float32), mask=m)
    tl.store(xs_ptr + slot * H + H // 2 + half, tl.load(t_ptr + 2 * half + 1, mask=m, other=0.0).to(tl.float32),
             mask=m)
    seq = tl.load(seq_ptr + slot) + 1
    # Every thread reads the count before one of them stores the new one: a warp that read it after the store
    # would publish seq + 1 (found in the PTX after the H200 runs; the worker would then finish a request the GPU
    # does not wait for, and the GPU time out on the one it does).
    tl.debug_barrier()
    tl.store(seq_ptr + slot, seq)
    _store_release(flag_ptr + slot, seq, ASM)


@triton.jit
def _combine_kernel(gpu_ptr, seq_ptr, done_ptr, outs_ptr, slot, delta_ptr, x_ptr, norm_w_ptr, res_ptr, t_ptr, H, eps,
                    max_polls, BLOCK_H: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr):
    """One program: wait until the host has finished this request (at most ``max_polls`` reads of its flag; past
    that the output is NaN, never silently wrong), add its fp32 sum to the GPU's, round, then the residual add and
    the next RMSNorm, as the down kernel ends a layer."""
    pdl.wait(PDL)
    seq = tl.load(seq_ptr + slot)
    polls = 0
    done = _load_acquire(done_ptr + slot, ASM)
    while (done != seq) & (polls < max_polls):
        done = _load_acquire(done_ptr + slot, ASM)
        polls += 1
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    y = tl.load(gpu_ptr + offs, mask=mask, other=0.0) + tl.load(outs_ptr + slot * H + offs, mask=mask, other=0.0,
                                                                 volatile=True)
    y = tl.where(done == seq, y, float("nan"))
    tl.store(delta_ptr + offs, y.to(delta_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()
    norm.add_rms_norm_row(x_ptr, delta_ptr, norm_w_ptr, res_ptr, t_ptr, H, eps, BLOCK_H)


# ---------------------------------------------------------------------------------------------------------------
# Prefill: token-expert pairs sorted by expert, one grouped GEMM per projection
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _decode_tile(blk_ptr, scl_ptr, rows, row_mask, kk, G, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 dtype: tl.constexpr, PAIRED: tl.constexpr):
    """Dense [BLOCK_N, BLOCK_K] weight tile (columns kk*BLOCK_K ...) of one expert, scaled, in ``dtype``. ``blk_ptr``:
    the expert's bytes, or with PAIRED its int32 words in the paired layout."""
    KG: tl.constexpr = BLOCK_K // 32
    if PAIRED:
        KW: tl.constexpr = BLOCK_K // 8
        cols = kk * KW + tl.arange(0, KW)
        q = tl.load(blk_ptr + rows[:, None] * (G * 4) + cols[None, :],
                    mask=row_mask[:, None] & (cols < G * 4)[None, :], other=0)
        # element e of each word at index 4a + 2c + d: the innermost join picks a, the outermost d
        ev = tl.join(tl.join(_code_f32(q, 0, True), _code_f32(q, 4, True)),
                     tl.join(_code_f32(q, 2, True), _code_f32(q, 6, True)))
        od = tl.join(tl.join(_code_f32(q, 1, True), _code_f32(q, 5, True)),
                     tl.join(_code_f32(q, 3, True), _code_f32(q, 7, True)))
        w = tl.reshape(tl.join(ev, od), [BLOCK_N, BLOCK_K]) * _TWO_POW_126
    else:
        KB: tl.constexpr = BLOCK_K // 2
        cols = kk * KB + tl.arange(0, KB)
        packed = tl.load(blk_ptr + rows[:, None] * (G * 16) + cols[None, :],
                         mask=row_mask[:, None] & (cols < G * 16)[None, :], other=0)
        lo, hi = _e2m1_times_2pow_m126(packed)
        w = tl.interleave(lo, hi) * _TWO_POW_126  # [BLOCK_N, BLOCK_K] exact fp4 values
    gs = kk * KG + tl.arange(0, KG)
    s = tl.load(scl_ptr + rows[:, None] * G + gs[None, :], mask=row_mask[:, None] & (gs < G)[None, :], other=0)
    w = tl.reshape(w, [BLOCK_N, KG, 32]) * _pow2(s.to(tl.int32))[:, :, None]
    return tl.reshape(w, [BLOCK_N, BLOCK_K]).to(dtype)


@triton.jit
def _tile_segment(meta_ptr, E, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr):
    """Which expert the M tile ``program_id(0)`` belongs to, and its sorted rows [start, end)."""
    pid_m = tl.program_id(0)
    offs_e = tl.arange(0, E_PAD)
    tile_end = tl.load(meta_ptr + E + offs_e, mask=offs_e < E, other=2**30)
    e = tl.sum((tile_end <= pid_m).to(tl.int32), axis=0)
    valid = e < E
    e = tl.minimum(e, E - 1)
    tile_start = tl.load(meta_ptr + e)
    seg_start = tl.load(meta_ptr + 2 * E + e)
    seg_end = seg_start + tl.load(meta_ptr + 3 * E + e)
    start = seg_start + (pid_m - tile_start) * BLOCK_M
    end = tl.where(valid, seg_end, start)
    return e, valid, start, end


@triton.jit
def _gate_up_grouped_kernel(x_ptr, order_ptr, meta_ptr, blk_ptr, scl_ptr, bias_ptr, h_ptr,
                            E, H, I, stride_x, alpha, limit,
                            TOP_K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                            PAIRED: tl.constexpr):
    e, valid, start, end = _tile_segment(meta_ptr, E, BLOCK_M, E_PAD)
    G = H // 32
    N2 = 2 * I
    rows_m = start + tl.arange(0, BLOCK_M)
    m_mask = rows_m < end
    tok = tl.load(order_ptr + rows_m, mask=m_mask, other=0) // TOP_K
    rows_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows_n < N2
    e64 = e.to(tl.int64)
    blk = blk_ptr + e64 * N2 * G * (4 if PAIRED else 16)
    scl = scl_ptr + e64 * N2 * G
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    n_k = tl.where(valid, tl.cdiv(H, BLOCK_K), 0)
    for kk in range(n_k):
        ks = kk * BLOCK_K + offs_k
        a = tl.load(x_ptr + tok[:, None] * stride_x + ks[None, :], mask=m_mask[:, None] & (ks < H)[None, :],
                    other=0.0)
        w = _decode_tile(blk, scl, rows_n, n_mask, kk, G, BLOCK_N, BLOCK_K, DOT_DTYPE, PAIRED)
        acc = tl.dot(a.to(DOT_DTYPE), tl.trans(w), acc, input_precision="ieee")
    acc += tl.load(bias_ptr + e64 * N2 + rows_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, [BLOCK_M, BLOCK_N // 2, 2]))
    h = _swiglu(gate, up, alpha, limit)
    cols = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    tl.store(h_ptr + rows_m[:, None] * I + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=m_mask[:, None] & (cols < I)[None, :])


@triton.jit
def _down_grouped_kernel(h_ptr, order_ptr, wts_ptr, meta_ptr, blk_ptr, scl_ptr, bias_ptr, y_ptr,
                         E, H, I,
                         E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PAIRED: tl.constexpr):
    e, valid, start, end = _tile_segment(meta_ptr, E, BLOCK_M, E_PAD)
    G = I // 32
    rows_m = start + tl.arange(0, BLOCK_M)
    m_mask = rows_m < end
    rows_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows_n < H
    e64 = e.to(tl.int64)
    blk = blk_ptr + e64 * H * G * (4 if PAIRED else 16)
    scl = scl_ptr + e64 * H * G
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    n_k = tl.where(valid, tl.cdiv(I, BLOCK_K), 0)
    for kk in range(n_k):
        ks = kk * BLOCK_K + offs_k
        a = tl.load(h_ptr + rows_m[:, None] * I + ks[None, :], mask=m_mask[:, None] & (ks < I)[None, :], other=0.0)
        w = _decode_tile(blk, scl, rows_n, n_mask, kk, G, BLOCK_N, BLOCK_K, DOT_DTYPE, PAIRED)
        acc = tl.dot(a.to(DOT_DTYPE), tl.trans(w), acc, input_precision="ieee")
    acc += tl.load(bias_ptr + e64 * H + rows_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    pair = tl.load(order_ptr + rows_m, mask=m_mask, other=0)
    acc *= tl.load(wts_ptr + pair, mask=m_mask, other=0.0)[:, None]
    tl.store(y_ptr + pair.to(tl.int64)[:, None] * H + rows_n[None, :], acc, mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------------------------------

# Launch shapes, chosen on an H200 (see .notes/kernels.md); the benchmark script overrides them to sweep.
DECODE_CONFIG = {"gate_up": {"BLOCK_N": 16, "BLOCK_G": 16, "num_warps": 4},
                 "down": {"BLOCK_N": 4, "BLOCK_G": 16, "num_warps": 4}}
PREFILL_CONFIG = {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
PREFILL_CONFIG_FP32 = {"BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}




# (x, norm weight, eps): the residual stream and the RMSNorm that end a layer after its MoE (down_decode).
Residual = tuple[torch.Tensor, torch.Tensor, float]
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, tokens: int) -> torch.Tensor:
    """Zeroed int32 counters, one per token, for the down kernel's last-program norm; each launch leaves them zero
    again, so one buffer per device serves every layer (the kernels of a step run one after another)."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < tokens:
        buf = _COUNTERS[device] = torch.zeros(max(tokens, 64), dtype=torch.int32, device=device)
    return buf


def _words(blocks: torch.Tensor) -> torch.Tensor:
    """The experts as int32 words (no copy): the GEMV kernels decode 8 codes per word. Paired blocks (int32, see
    kernels/mxfp4.py) are words already."""
    return blocks.contiguous().view(torch.int32)


def _paired(blocks: torch.Tensor) -> bool:
    """Checkpoint-layout blocks are uint8 [..., G, 16]; paired ones (re-laid for the decode GEMVs) int32 [..., G, 4]."""
    return blocks.dtype == torch.int32


def _check(x: torch.Tensor, gate_up_blocks: torch.Tensor, down_blocks: torch.Tensor, top_k: int) -> None:
    if not (x.is_cuda or interpreting()):
        raise ValueError("the Triton MoE needs CUDA tensors (or TRITON_INTERPRET=1); use moe_reference on the CPU")
    E, _, G, nb = gate_up_blocks.shape
    paired = _paired(gate_up_blocks)
    if (nb != (_BYTES // 4 if paired else _BYTES) or paired != _paired(down_blocks) or G * _GROUP != x.shape[1]
            or down_blocks.shape[:2] != (E, x.shape[1])):
        raise ValueError(f"MXFP4 expert shapes {tuple(gate_up_blocks.shape)} / {tuple(down_blocks.shape)} "
                         f"({gate_up_blocks.dtype} / {down_blocks.dtype}) do not fit hidden size {x.shape[1]}")
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in 1..{E}, got {top_k}")


def _f16x2(dtype: torch.dtype) -> bool:
    """bf16/fp16 activations take the fp16x2 decode GEMVs; fp32 ones (a test/debug path) the exact fp32 GEMVs."""
    return dtype in (torch.bfloat16, torch.float16)


def _h_exp(limit: float) -> int:
    """The power of two for h in the fp16x2 down GEMV: |h| <= limit * (limit + 1) after the clamped SwiGLU (gate <= limit,
    sigmoid <= 1, |up + 1| <= limit + 1; a negative gate gives |gate * sigmoid(alpha * gate)| < 1), kept below 2**15."""
    return 14 - math.floor(math.log2(max(limit * (limit + 1.0), 1.0)))


def router_logits(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Decode step 1: fp32 router logits [T, E]; for the fp16x2 GEMV also each token's power of two [T] and x times
    it as fp16 pairs [T, H / 2] (int32)."""
    return _route(x, None, None, 0.0, router_weight, router_bias)[2]


def add_rms_norm_route(x: torch.Tensor, delta: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                       router_weight: torch.Tensor,
                       router_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Decode step 1 with the layer's residual add and MoE RMSNorm in the same launch: -> (x + delta,
    t = rms_norm(x + delta), routing of t), as norm.add_rms_norm then router_logits would give."""
    if delta.shape != x.shape or norm_weight.shape != (x.shape[1],):
        raise ValueError(f"residual {tuple(delta.shape)} / norm weight {tuple(norm_weight.shape)} do not fit x "
                         f"{tuple(x.shape)}")
    return _route(x, delta.contiguous(), norm_weight, eps, router_weight, router_bias)


def _route(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float,
           router_weight: torch.Tensor,
           router_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    T, H = x.shape
    E = router_weight.shape[0]
    logits = torch.empty(T, E, dtype=torch.float32, device=x.device)
    x_exp = torch.empty(T, dtype=torch.int32, device=x.device)
    x2 = torch.empty(T, H // 2, dtype=torch.int32, device=x.device)
    has_norm = delta is not None
    res = torch.empty(T, H, dtype=x.dtype, device=x.device) if has_norm else x
    t = torch.empty(T, H, dtype=x.dtype, device=x.device) if has_norm else x
    _router_logits_kernel[(T, triton.cdiv(E, 2))](
        x, delta if has_norm else x, norm_weight if has_norm else router_bias, res, t, float(eps), router_weight,
        router_bias, logits, x_exp, x2, H, E, x.stride(0), BLOCK_E=2, BLOCK_H=triton.next_power_of_2(H),
        F16X2=_f16x2(x.dtype), HAS_NORM=has_norm, **pdl.launch(x))
    return res, t, (logits, x_exp, x2)


def gate_up_decode(x: torch.Tensor, routing: tuple[torch.Tensor, ...], blocks: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor, top_k: int, alpha: float, limit: float,
                   columns: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode step 2: top-k + softmax, gate_up GEMV over the k experts, SwiGLU -> (ids, weights, h): h as fp16
    pairs times 2**_h_exp(limit) [T*k, I/2] int32 for the fp16x2 GEMV, else times 2**100 in x's dtype [T*k, I].
    ``columns``: compute only h[:, :columns] (a multiple of 32; the rest is left unwritten)."""
    T, H = x.shape
    E, N2 = blocks.shape[:2]
    n_rows = N2 if columns is None else 2 * columns
    logits, x_exp, x2 = routing
    f16x2 = _f16x2(x.dtype)
    ids = torch.empty(T * top_k, dtype=torch.int32, device=x.device)
    wts = torch.empty(T * top_k, dtype=torch.float32, device=x.device)
    h = (torch.empty(T * top_k, N2 // 4, dtype=torch.int32, device=x.device) if f16x2 else
         torch.empty(T * top_k, N2 // 2, dtype=x.dtype, device=x.device))
    cfg = dict(DECODE_CONFIG["gate_up"])
    if f16x2 and cfg["BLOCK_N"] % 16:
        raise ValueError(f"the fp16x2 gate_up GEMV packs 8 h columns per program at least: BLOCK_N {cfg['BLOCK_N']}")
    k_pad = triton.next_power_of_2(top_k)
    experts = max(1, k_pad // cfg.pop("expert_slices", 1))  # per program; more programs, each a slice of the k
    _gate_up_decode_kernel[(T, triton.cdiv(n_rows, cfg["BLOCK_N"]), k_pad // experts)](
        x, logits, x_exp, x2, ids, wts, _words(blocks), scales, bias, h, E, H, N2 // 2, n_rows, x.stride(0),
        float(alpha), float(limit), _h_exp(limit), TOP_K=top_k, K_PAD=k_pad, E_PAD=triton.next_power_of_2(E),
        EXPERTS=experts, F16X2=f16x2, PAIRED=_paired(blocks), ASM=not interpreting(), **cfg, **pdl.launch(x))
    return ids, wts, h


def down_decode(h: torch.Tensor, ids: torch.Tensor, wts: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor, top_k: int, limit: float, out: torch.Tensor,
                residual: Residual | None = None, columns: int | None = None,
                logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Decode step 3: down GEMV over the k experts, bias, routing weights, sum over k -> out [T, H]. With
    ``residual`` the same launch also ends the layer: -> (x + out, rms_norm(x + out)), as norm.add_rms_norm.
    ``columns``: sum over h[:, :columns] only (a multiple of 32). ``logits``: the router logits [T, E] the
    gate_up kernel routed ``ids``/``wts`` from, launched right before it: the kernel routes from them itself and
    requests its first weights before waiting for h (see _down_decode_kernel)."""
    T, H = out.shape
    I = blocks.shape[2] * 32
    f16x2 = h.dtype == torch.int32
    cfg = DECODE_CONFIG["down"]
    if residual is not None:
        x, norm_w, eps = residual
        if x.shape != out.shape or not x.is_contiguous() or norm_w.shape != (H,):
            raise ValueError(f"residual {tuple(x.shape)} / norm weight {tuple(norm_w.shape)} do not fit the MoE "
                             f"output {tuple(out.shape)}")
        res, t = torch.empty_like(out), torch.empty_like(out)
        count = _counters(out.device, T)
    else:
        x = norm_w = res = t = count = out
        eps = 0.0
    E = logits.shape[1] if logits is not None else blocks.shape[0]
    _down_decode_kernel[(T, triton.cdiv(H, cfg["BLOCK_N"]))](
        h, ids, wts, logits if logits is not None else wts, _words(blocks), scales, bias, out, E, H, I,
        (I if columns is None else columns) // 32, _h_exp(limit), x, norm_w, res, t, count, float(eps), TOP_K=top_k,
        K_PAD=triton.next_power_of_2(top_k), E_PAD=triton.next_power_of_2(E), F16X2=f16x2, PAIRED=_paired(blocks),
        ASM=not interpreting(), HAS_NORM=residual is not None, ROUTE=logits is not None,
        BLOCK_H=triton.next_power_of_2(H), **cfg, **pdl.launch(h))
    return out if residual is None else (res, t)


def experts_decode(x: torch.Tensor, routing: tuple[torch.Tensor, ...], gate_up_blocks: torch.Tensor,
                   gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor, down_blocks: torch.Tensor,
                   down_scales: torch.Tensor, down_bias: torch.Tensor, top_k: int, alpha: float = 1.702,
                   limit: float = 7.0,
                   residual: Residual | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Decode steps 2 and 3 on a routing from router_logits / add_rms_norm_route; ``residual`` as in down_decode."""
    _check(x, gate_up_blocks, down_blocks, top_k)
    ids, wts, h = gate_up_decode(x, routing, gate_up_blocks, gate_up_scales, gate_up_bias, top_k, alpha, limit)
    return down_decode(h, ids, wts, down_blocks, down_scales, down_bias, top_k, limit, torch.empty_like(x),
                       residual, logits=routing[0])


@dataclass
class HostExchange:
    """What the decode kernels and a CPU worker share, one slot per offloaded layer. The host-side buffers are
    pinned (device-visible: the kernels read and write them over PCIe, inside a CUDA graph), each in its own
    allocation; ``seq`` stays on the GPU. A request is complete when ``dones[slot] == flags[slot]``."""

    flags: torch.Tensor  # int32 [S], host: the sequence number of the latest request (written by the GPU)
    dones: torch.Tensor  # int32 [S], host: the sequence number the CPU finished last
    ids: torch.Tensor  # int32 [S, k], host: routed experts, descending
    wts: torch.Tensor  # fp32 [S, k], host: routing weights
    xs: torch.Tensor  # fp32 [S, H], host: the MoE input, even elements then odd ones
    outs: torch.Tensor  # fp32 [S, H], host: the CPU's weighted sum over columns [split, I)
    seq: torch.Tensor  # int32 [S], GPU: requests issued so far
    split: int  # the GPU computes intermediate columns [0, split), the CPU [split, I)
    max_polls: int = 1 << 20  # how long the GPU waits for the CPU (~1-2 s over PCIe) before giving NaN

    @classmethod
    def allocate(cls, slots: int, top_k: int, hidden: int, split: int, device: torch.device) -> HostExchange:
        pin = device.type == "cuda"

        def host(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            t = torch.zeros(*shape, dtype=dtype)
            return t.pin_memory() if pin else t

        return cls(flags=host(slots, dtype=torch.int32), dones=host(slots, dtype=torch.int32),
                   ids=host(slots, top_k, dtype=torch.int32), wts=host(slots, top_k, dtype=torch.float32),
                   xs=host(slots, hidden, dtype=torch.float32), outs=host(slots, hidden, dtype=torch.float32),
                   seq=torch.zeros(slots, dtype=torch.int32, device=device), split=split)


def experts_decode_shared(x: torch.Tensor, routing: tuple[torch.Tensor, ...], gate_up_blocks: torch.Tensor,
                          gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor, down_blocks: torch.Tensor,
                          down_scales: torch.Tensor, down_bias: torch.Tensor, top_k: int, alpha: float, limit: float,
                          residual: Residual, exchange: HostExchange, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``experts_decode`` for one token with ``residual``, the intermediate columns [split, I) computed by a CPU
    worker serving ``exchange`` (which must be running: the GPU waits for it). -> (x + out, rms_norm(x + out))."""
    _check(x, gate_up_blocks, down_blocks, top_k)
    T, H = x.shape
    I = down_blocks.shape[2] * 32
    split = exchange.split
    if T != 1 or not 0 < split < I or split % _GROUP:
        raise ValueError(f"a CPU share takes one token and a split in 32..{I - 32} (multiple of 32), got {T} tokens, "
                         f"split {split}")
    res_in, norm_w, eps = residual
    logits = routing[0]
    E = gate_up_blocks.shape[0]
    asm = not interpreting()
    _publish_kernel[(1,)](logits, x, exchange.seq, exchange.flags, exchange.ids, exchange.wts, exchange.xs, slot,
                          E, H, TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), E_PAD=triton.next_power_of_2(E),
                          BLOCK_H=triton.next_power_of_2(H), ASM=asm, **pdl.launch(x))
    ids, wts, h = gate_up_decode(x, routing, gate_up_blocks, gate_up_scales, gate_up_bias, top_k, alpha, limit,
                                 columns=split)
    part = down_decode(h, ids, wts, down_blocks, down_scales, down_bias, top_k, limit,
                       torch.empty(T, H, dtype=torch.float32, device=x.device), columns=split)
    delta, res, t = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    _combine_kernel[(1,)](part, exchange.seq, exchange.dones, exchange.outs, slot, delta, res_in, norm_w, res, t, H,
                          float(eps), exchange.max_polls, BLOCK_H=triton.next_power_of_2(H), ASM=asm,
                          num_warps=8, **pdl.launch(x))
    return res, t


def moe_decode(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
               gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
               down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
               top_k: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Few tokens: router logits, then a GEMV over the token's k experts for gate_up+SwiGLU (top-k inside) and one
    for down (summing the k experts in registers). Three launches, no host synchronisation (CUDA-graph safe)."""
    _check(x, gate_up_blocks, down_blocks, top_k)
    x = x.contiguous()
    return experts_decode(x, router_logits(x, router_weight, router_bias), gate_up_blocks, gate_up_scales,
                          gate_up_bias, down_blocks, down_scales, down_bias, top_k, alpha, limit)


def moe_prefill(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
                gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
                top_k: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """Many tokens: sort the (token, expert) pairs by expert, grouped GEMM for gate_up+SwiGLU, grouped GEMM for
    down with the routing weight, then a sum over the k pairs of each token. No host synchronisation."""
    _check(x, gate_up_blocks, down_blocks, top_k)
    x = x.contiguous()
    T, H = x.shape
    E, N2 = gate_up_blocks.shape[:2]
    I = N2 // 2
    P = T * top_k
    ids, wts = route(x, router_weight, router_bias, top_k)
    flat = ids.flatten().long()
    order = torch.sort(flat, stable=True).indices.to(torch.int32)
    counts = torch.zeros(E, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    per_expert = P / E
    block_m = 16 if per_expert <= 16 else (32 if per_expert <= 32 else (64 if per_expert <= 128 else 128))
    tiles = (counts + block_m - 1) // block_m
    tile_end = tiles.cumsum(0)
    seg_end = counts.cumsum(0)
    meta = torch.stack((tile_end - tiles, tile_end, seg_end - counts, counts)).to(torch.int32).contiguous()
    n_m = P // block_m + E
    # fp32 operands take 4x the shared memory and registers of bf16 ones: smaller tiles (a test/debug path).
    cfg = dict(PREFILL_CONFIG) if x.dtype != torch.float32 else dict(PREFILL_CONFIG_FP32)
    operand = dot_dtype(x.dtype)
    e_pad = triton.next_power_of_2(E)
    h = torch.empty(P, I, dtype=x.dtype, device=x.device)
    _gate_up_grouped_kernel[(n_m, triton.cdiv(N2, cfg["BLOCK_N"]))](
        x, order, meta, gate_up_blocks, gate_up_scales, gate_up_bias, h, E, H, I, x.stride(0),
        float(alpha), float(limit), TOP_K=top_k, E_PAD=e_pad, BLOCK_M=block_m, DOT_DTYPE=operand,
        PAIRED=_paired(gate_up_blocks), **cfg)
    y = torch.empty(P, H, dtype=torch.float32, device=x.device)
    _down_grouped_kernel[(n_m, triton.cdiv(H, cfg["BLOCK_N"]))](
        h, order, wts.flatten().contiguous(), meta, down_blocks, down_scales, down_bias, y, E, H, I,
        E_PAD=e_pad, BLOCK_M=block_m, DOT_DTYPE=operand, PAIRED=_paired(down_blocks), **cfg)
    return y.view(T, top_k, H).sum(1).to(x.dtype)


def moe(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
        gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
        down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
        top_k: int, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """x [T,H] -> [T,H] with the Triton kernels: the decode path for a few tokens, grouped GEMMs above that."""
    path = moe_decode if x.shape[0] <= DECODE_MAX_TOKENS else moe_prefill
    return path(x, router_weight, router_bias, gate_up_blocks, gate_up_scales, gate_up_bias,
                down_blocks, down_scales, down_bias, top_k, alpha, limit)
