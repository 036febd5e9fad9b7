"""The Triton attention kernels (prefill flash kernel, split-K decode kernel + combine) against the torch reference.

Cases cover what the engine hands them: a fresh causal prefill, chunked prefill against a longer cache, decode over a
cache slice, a sliding window, and a ring buffer whose slots are out of order with empty (-1) holes; GQA group sizes
1 and 4; sinks that dominate or vanish; queries that see no key at all (their output must be 0).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import attention as attn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tolerances(v: torch.Tensor) -> dict[str, float]:
    """The output is a convex-or-less combination of v rows. fp32: only the summation order differs (~1e-6).
    bf16: the kernels feed the probabilities to the P@V product in bf16 (2**-8 relative each, at most 2**-8 of
    max|v| in total) and the output is rounded to bf16 (truncated by Triton's CPU interpreter: up to 2**-7)."""
    vmax = v.float().abs().max().item()
    if v.dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5 * vmax)
    return dict(rtol=2**-7, atol=2**-6 * vmax)


def _case(T: int, S: int, Hq: int, Hkv: int, D: int, dtype: torch.dtype, layout: str, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(T, Hq, D, generator=gen).to(dtype)
    k = torch.randn(S, Hkv, D, generator=gen).to(dtype)
    v = torch.randn(S, Hkv, D, generator=gen).to(dtype)
    sinks = (2 * torch.randn(Hq, generator=gen)).to(dtype)
    start = 200  # absolute position of the first new token
    q_pos = torch.arange(start, start + T)
    if layout == "cache":  # a cache slice: positions 0..S-1, the new tokens at its end
        q_pos = torch.arange(S - T, S)
        k_pos = torch.arange(S)
    elif layout == "ring":  # a shuffled ring buffer of older tokens, some slots empty, then the new chunk
        ring = S - T
        old = start - 1 - torch.randperm(ring, generator=gen)
        old[torch.rand(ring, generator=gen) < 0.25] = -1
        k_pos = torch.cat((old, q_pos))
    else:  # "future": every key lies after every query, so nothing is visible
        k_pos = torch.arange(start + T, start + T + S)
    return tuple(t.to(DEVICE) for t in (q, k, v, sinks, q_pos, k_pos))


PREFILL_CASES = [  # T, S, Hq, Hkv, D, window, layout
    (37, 37, 4, 1, 32, None, "cache"),
    (37, 37, 8, 2, 16, 9, "cache"),
    (21, 70, 4, 4, 64, None, "cache"),  # chunked prefill against a longer cache
    (19, 19 + 24, 4, 1, 16, 16, "ring"),
    (17, 30, 2, 2, 16, None, "future"),
    (3, 1100, 2, 1, 16, 16, "cache"),  # the band lies past the first scan step of the key-range pre-pass
    (3, 1100, 2, 1, 16, None, "cache"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,S,Hq,Hkv,D,window,layout", PREFILL_CASES)
def test_prefill_kernel_matches_reference(T: int, S: int, Hq: int, Hkv: int, D: int, window: int | None,
                                          layout: str, dtype: torch.dtype) -> None:
    q, k, v, sinks, q_pos, k_pos = _case(T, S, Hq, Hkv, D, dtype, layout, seed=T + S)
    ref = attn.attention_reference(q, k, v, sinks, q_pos, k_pos, 0.125, window)
    out = attn.attention_prefill(q, k, v, sinks, q_pos, k_pos, 0.125, window)
    assert out.shape == (T, Hq * D) and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **_tolerances(v))


DECODE_CASES = [  # T, S, Hq, Hkv, D, window, layout, split (the keys over several programs + the combine kernel)
    (1, 50, 8, 2, 16, None, "cache", False),
    (1, 300, 8, 2, 64, None, "cache", True),
    (1, 129, 8, 1, 16, 128, "ring", False),  # the sliding layer's shape: 128 ring slots + the new token
    (3, 3 + 30, 4, 1, 32, 16, "ring", True),  # a short chunk
    (2, 40, 4, 2, 16, None, "future", True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,S,Hq,Hkv,D,window,layout,split", DECODE_CASES)
def test_decode_kernel_matches_reference(T: int, S: int, Hq: int, Hkv: int, D: int, window: int | None,
                                         layout: str, split: bool, dtype: torch.dtype,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(attn.DECODE_CONFIG, "split_min_keys", 0 if split else 10**9)
    monkeypatch.setitem(attn.DECODE_CONFIG, "keys_per_split", 16)
    q, k, v, sinks, q_pos, k_pos = _case(T, S, Hq, Hkv, D, dtype, layout, seed=T * S)
    ref = attn.attention_reference(q, k, v, sinks, q_pos, k_pos, 0.125, window)
    out = attn.attention_decode(q, k, v, sinks, q_pos, k_pos, 0.125, window)
    torch.testing.assert_close(out.float(), ref.float(), **_tolerances(v))


def test_query_that_sees_no_key_gets_zero() -> None:
    q, k, v, sinks, q_pos, k_pos = _case(2, 40, 4, 2, 16, torch.float32, "future", seed=3)
    for path in (attn.attention_prefill, attn.attention_decode):
        out = path(q, k, v, sinks, q_pos, k_pos, 0.125, None)
        assert torch.equal(out, torch.zeros_like(out))


def test_sink_only_in_the_denominator() -> None:
    """One visible key: the output is v * e^s / (e^s + e^sink), so a large sink shrinks it and a very negative sink
    leaves v itself."""
    q = torch.randn(1, 2, 16, device=DEVICE)
    k = torch.randn(1, 1, 16, device=DEVICE)
    v = torch.randn(1, 1, 16, device=DEVICE)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
    sinks = torch.tensor([-1e4, 0.0], device=DEVICE)
    for path in (attn.attention_prefill, attn.attention_decode):
        out = path(q, k, v, sinks, pos, pos, 0.125, None).view(2, 16)
        torch.testing.assert_close(out[0], v[0, 0])
        s = (q[0, 1] @ k[0, 0]) * 0.125
        torch.testing.assert_close(out[1], v[0, 0] * torch.sigmoid(s))


def test_attention_dispatches_on_query_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(attn, "attention_decode", lambda *a: calls.append("decode"))
    monkeypatch.setattr(attn, "attention_prefill", lambda *a: calls.append("prefill"))
    k = torch.zeros(5, 2, 16)
    for T in (1, attn.DECODE_MAX_ROWS // 4, attn.DECODE_MAX_ROWS // 4 + 1):  # 4 query heads per KV head
        attn.attention(torch.zeros(T, 8, 16), k, k, torch.zeros(8), torch.arange(T), torch.arange(5), 0.125, None)
    assert calls == ["decode", "decode", "prefill"]
