"""MXFP4 (OCP microscaling, E2M1 values + one E8M0 scale per 32 elements): the torch reference.

Layout as in the gpt-oss checkpoints: ``blocks`` is uint8 ``[..., rows, G, 16]`` (two 4-bit codes per byte, the
low nibble is the even element), ``scales`` is uint8 ``[..., rows, G]`` holding ``2**(s - 127)``; the 32-element
blocks run along the last (input) dimension. The fast kernels decode in registers and are tested against this.

The paired layout (``to_paired``): the same 4.25 bits a weight, with the bits of each 32-bit word (8 codes)
re-laid so the decode GEMVs build the fp16 pair (element i, element i + 4) of a word with fewer instructions: pair
0 with one AND, pair 1 with a shift and an AND, pairs 2 and 3 with two shifts and two logic ops (15 instructions a
word in the checkpoint layout, 11 here; an fp16 code pattern, magnitude at bits 9..11 and sign at 15, has no
tiling of 16 bits by more than two shifted copies, so 11 is the floor for this scheme). The engine re-lays the
experts it keeps on the GPU, in place, and marks them by dtype: paired blocks are int32 ``[..., rows, G, 4]``.
"""

from __future__ import annotations

import torch

FP4_VALUES = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)
BLOCK = 32
SCALE_BIAS = 127


# Paired layout: for pair i (elements i and i + 4 of a word), the lowest bit of its 3 magnitude bits and its sign
# bit within the low 16 bits of the word; element i + 4 sits 16 bits higher.
PAIRED_MAGNITUDE = (9, 6, 0, 3)
PAIRED_SIGN = (15, 12, 13, 14)


def _relay(words: torch.Tensor, paired: bool) -> torch.Tensor:
    """int32 words -> the same codes in the other layout (checkpoint <-> paired), computed in int64."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros_like(w)
    for e in range(8):
        i, up = e % 4, 16 * (e // 4)
        mag, sign = PAIRED_MAGNITUDE[i] + up, PAIRED_SIGN[i] + up
        if paired:
            code = (w >> (4 * e)) & 0xF
            out |= ((code & 7) << mag) | ((code >> 3) << sign)
        else:
            out |= (((w >> mag) & 7) | (((w >> sign) & 1) << 3)) << (4 * e)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def to_paired(blocks: torch.Tensor) -> torch.Tensor:
    """Checkpoint-layout blocks uint8 ``[..., G, 16]`` -> paired int32 words ``[..., G, 4]`` (a new tensor)."""
    return _relay(blocks.contiguous().view(torch.int32), True)


def to_paired_(blocks: torch.Tensor, chunk_bytes: int = 8 << 20) -> torch.Tensor:
    """``to_paired`` in place, ``chunk_bytes`` at a time (a few tens of MB of scratch for GBs of experts): returns
    the int32 view of ``blocks``' own memory, which must not be read as checkpoint bytes afterwards. Blocks that are
    not contiguous get a re-laid copy instead."""
    if not blocks.is_contiguous():
        return to_paired(blocks)
    words = blocks.view(torch.int32)
    flat = words.view(-1)
    step = max(1, chunk_bytes // 4)
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        part.copy_(_relay(part, True))
    return words


def from_paired(words: torch.Tensor) -> torch.Tensor:
    """Paired int32 words ``[..., G, 4]`` -> checkpoint-layout uint8 blocks ``[..., G, 16]``."""
    return _relay(words.contiguous(), False).view(torch.uint8)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Packed ``[..., R, G, 16]`` (or paired int32 ``[..., R, G, 4]``) + ``[..., R, G]`` -> dense ``[..., R, 32*G]`` in
    ``dtype`` (exact in bf16)."""
    if blocks.dtype == torch.int32:
        blocks = from_paired(blocks)
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 shapes disagree: blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}")
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    *prefix, groups, nbytes = blocks.shape
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).reshape(*prefix, groups, 2 * nbytes).long()
    exp = scales.to(torch.int32) - SCALE_BIAS
    values = torch.ldexp(lut[codes], exp.unsqueeze(-1).to(dtype))
    return values.reshape(*prefix, groups * BLOCK)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[..., R, C]`` (C a multiple of 32) -> (blocks uint8 ``[..., R, C/32, 16]``, scales uint8 ``[..., R, C/32]``).

    OCP MX rule: the shared exponent is ``floor(log2(amax)) - 2`` (2 is E2M1's largest exponent), each element is
    rounded to the nearest E2M1 value (ties to the even code) and saturated at +-6.
    """
    *prefix, cols = weight.shape
    if cols % BLOCK:
        raise ValueError(f"MXFP4 needs the last dimension to be a multiple of {BLOCK}, got {cols}")
    w = weight.float().reshape(*prefix, cols // BLOCK, BLOCK)
    amax = w.abs().amax(dim=-1, keepdim=True)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(2.0**-126))) - 2, torch.full_like(amax, -127))
    exp = exp.clamp(-SCALE_BIAS, 127)
    scaled = w / torch.exp2(exp)
    magnitudes = torch.tensor(FP4_VALUES[:8], dtype=torch.float32, device=weight.device)
    dist = (scaled.abs().clamp(max=6.0).unsqueeze(-1) - magnitudes).abs()
    # Nearest magnitude; on a tie prefer the even code (argmin takes the first, so flip odd ones by a hair).
    dist = dist + torch.tensor([0.0, 1e-6] * 4, device=weight.device)
    mag_code = dist.argmin(dim=-1)
    codes = (mag_code | ((scaled < 0) & (mag_code > 0)).long() << 3).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exp.squeeze(-1) + SCALE_BIAS).to(torch.uint8)
    return packed.contiguous(), scales.contiguous()
