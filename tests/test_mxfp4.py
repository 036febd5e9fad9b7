"""The MXFP4 reference dequantizer and quantizer."""

from __future__ import annotations

import pytest
import torch

from gptoss_kernels import mxfp4


def test_dequantize_equals_transformers_bit_for_bit() -> None:
    integ = pytest.importorskip("transformers.integrations.mxfp4", reason="transformers is the oracle")
    gen = torch.Generator().manual_seed(0)
    # Every byte value, and scales over the whole useful E8M0 range (255 is NaN and unused by any reference).
    blocks = torch.randint(0, 256, (3, 40, 4, 16), dtype=torch.uint8, generator=gen)
    blocks[0, :4] = torch.arange(256, dtype=torch.uint8).view(4, 4, 16)
    scales = torch.randint(100, 150, (3, 40, 4), dtype=torch.uint8, generator=gen)
    scales[1, :37, 0] = torch.arange(0, 255, 7, dtype=torch.uint8)
    theirs = integ.convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)  # [E, in, out]
    ours = mxfp4.dequantize(blocks, scales, torch.bfloat16)  # [E, out, in]
    assert torch.equal(ours.transpose(1, 2), theirs)


def test_element_layout_low_nibble_is_even_element() -> None:
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x72  # low nibble 2 -> +1.0 (element 0), high nibble 7 -> +6.0 (element 1)
    blocks[0, 0, 15] = 0x9F  # low 0xF -> -6.0 (element 30), high 9 -> -0.5 (element 31)
    scales = torch.tensor([[128]], dtype=torch.uint8)  # 2**1
    w = mxfp4.dequantize(blocks, scales, torch.float32)[0]
    assert w[0].item() == 2.0 and w[1].item() == 12.0
    assert w[30].item() == -12.0 and w[31].item() == -1.0
    assert w.shape == (32,)


def test_quantize_roundtrips_representable_values_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (7, 64), generator=gen)
    values = torch.tensor(mxfp4.FP4_VALUES)[codes]
    values[:, 0] = 6.0  # each block holds its max so the shared exponent is 0
    values[:, 32] = -6.0
    scale = torch.exp2(torch.randint(-5, 5, (7, 1), generator=gen).float())
    dense = values * scale
    blocks, scales = mxfp4.quantize(dense)
    assert blocks.shape == (7, 2, 16) and scales.shape == (7, 2)
    assert torch.equal(mxfp4.dequantize(blocks, scales, torch.float32), dense)


def test_quantize_error_is_bounded_by_the_largest_gap() -> None:
    dense = torch.randn(16, 96, generator=torch.Generator().manual_seed(2))
    blocks, scales = mxfp4.quantize(dense)
    back = mxfp4.dequantize(blocks, scales, torch.float32)
    # Block max lands in [4, 8) * 2**e; saturating at 6 costs at most 2 * 2**e, rounding elsewhere at most 1 * 2**e.
    unit = torch.exp2(scales.float() - 127).repeat_interleave(32, dim=-1)
    assert ((back - dense).abs() <= 2 * unit + 1e-6).all()
    assert (back - dense).abs().mean() < 0.1 * dense.abs().mean() + 0.1


def test_dequantize_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        mxfp4.dequantize(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        mxfp4.dequantize(torch.zeros(2, 3, 16), torch.zeros(2, 3, dtype=torch.uint8))


def test_paired_layout_roundtrips_and_dequantizes_the_same() -> None:
    """The paired layout is a permutation of each word's bits: back and forth is the identity for every byte
    value, the in-place form returns a view of the same memory, and the dequantized weights do not change."""
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (2, 9, 3, 16), dtype=torch.uint8, generator=gen)
    blocks[0, :4, :2] = torch.arange(128, dtype=torch.uint8).view(4, 2, 16)  # every byte value
    blocks[1, :4, :2] = torch.arange(128, 256).to(torch.uint8).view(4, 2, 16)
    scales = torch.randint(110, 140, (2, 9, 3), dtype=torch.uint8, generator=gen)
    paired = mxfp4.to_paired(blocks)
    assert paired.dtype == torch.int32 and paired.shape == (2, 9, 3, 4)
    assert not torch.equal(paired.view(torch.uint8), blocks)
    assert torch.equal(mxfp4.from_paired(paired), blocks)
    assert torch.equal(mxfp4.dequantize(paired, scales, torch.float32), mxfp4.dequantize(blocks, scales, torch.float32))
    in_place = blocks.clone()
    words = mxfp4.to_paired_(in_place)
    assert words.data_ptr() == in_place.data_ptr() and torch.equal(words, paired)


def test_paired_layout_puts_each_code_where_the_decode_reads_it() -> None:
    """Pair i of a word (elements i and i + 4) as the GEMV builds it: the magnitude bits at 9..11 and the sign at 15
    of each 16-bit lane, read as fp16, are the fp4 value times 2**-14."""
    values = torch.tensor(mxfp4.FP4_VALUES, dtype=torch.float64)
    codes = torch.randint(0, 16, (64, 8), generator=torch.Generator().manual_seed(2))
    words = torch.zeros(64, dtype=torch.int64)
    for e in range(8):
        words |= codes[:, e] << (4 * e)
    hub = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).view(torch.uint8).view(64, 1, 4)
    q = mxfp4.to_paired(torch.cat([hub] * 4, dim=-1)).view(64, 4)[:, 0].to(torch.int64) & 0xFFFFFFFF
    mag, sign, pair = 0x0E000E00, 0x80008000, 0x8E008E00
    lanes = [q & pair, (q << 3) & pair, ((q << 9) & mag) | ((q << 2) & sign), ((q << 6) & mag) | ((q << 1) & sign)]
    for i, r in enumerate(lanes):
        r = r & 0xFFFFFFFF
        for half, e in ((r & 0xFFFF, i), (r >> 16, i + 4)):
            fp16 = torch.where(half >= 2**15, half - 2**16, half).to(torch.int16).view(torch.float16).double()
            assert torch.equal(fp16 * 2**14, values[codes[:, e]]), (i, e)
