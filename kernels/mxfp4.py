"""MXFP4 (OCP microscaling, E2M1 values + one E8M0 scale per 32 elements): the torch reference.

Layout as in the gpt-oss checkpoints: ``blocks`` is uint8 ``[..., rows, G, 16]`` (two 4-bit codes per byte, the
low nibble is the even element), ``scales`` is uint8 ``[..., rows, G]`` holding ``2**(s - 127)``; the 32-element
blocks run along the last (input) dimension. The fast kernels decode in registers and are tested against this.
"""

from __future__ import annotations

import torch

FP4_VALUES = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)
BLOCK = 32
SCALE_BIAS = 127


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Packed ``[..., R, G, 16]`` + ``[..., R, G]`` -> dense ``[..., R, 32*G]`` in ``dtype`` (exact in bf16)."""
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
