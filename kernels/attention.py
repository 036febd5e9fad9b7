"""Attention with per-head sinks and an optional sliding window: the torch reference and Triton kernels.

One signature serves prefill, chunked prefill and decode. Keys arrive in whatever order the caller assembled them
(a cache slice, or a ring buffer followed by the new chunk), each with its absolute position; ``k_pos = -1`` marks an
empty slot. Key j is visible to query i iff ``0 <= k_pos[j] <= q_pos[i]`` and, with a window,
``q_pos[i] - k_pos[j] < window``. The sink is a per-head logit (not scaled) that joins only the softmax denominator
(specs/gpt-oss-model.md §4.4.5); a query that sees no key gets a zero output. Softmax statistics are fp32.

GQA: query head h reads key/value head ``h // (Hq // Hkv)``.

Two kernels behind one wrapper: a flash-attention kernel over blocks of queries (prefill; key blocks nobody in
the query block can see are skipped), and a flash-decoding kernel for a few query tokens that packs all query heads
of one KV head into the rows of one tile and splits the keys over programs, followed by a small combine kernel.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import pdl
from .interpret import dot_dtype, interpreting

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)
_NEG = tl.constexpr(-1.0e30)  # "no key seen yet": finite, so exp2(m_old - m_new) never meets inf - inf

# The decode kernel handles up to this many query rows (tokens x query heads per KV head) in one tile.
DECODE_MAX_ROWS = 64


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
                        k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
    """q [T,Hq,D], k/v [S,Hkv,D] -> [T, Hq*D] in q's dtype; fp32 math."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    qf = q.float().view(T, Hkv, Hq // Hkv, D)
    scores = torch.einsum("tkgd,skd->kgts", qf, k.float()) * sm_scale
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if window is not None:
        visible &= (q_pos[:, None] - k_pos[None, :]) < window
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = sinks.float().view(Hkv, Hq // Hkv, 1, 1).expand(-1, -1, T, 1)
    probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    out = torch.einsum("kgts,skd->tkgd", probs, v.float())
    return out.reshape(T, Hq * D).to(q.dtype)


@triton.jit
def _visible(q_pos, k_pos, window, HAS_WINDOW: tl.constexpr):
    vis = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        vis = vis & (q_pos[:, None] - k_pos[None, :] < window)
    return vis


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, sinks_ptr, q_pos_ptr, k_pos_ptr, out_ptr,
                    T, S, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot,
                    qk_scale, window,
                    GROUP: tl.constexpr, HEAD_D: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """One program: BLOCK_M queries of one query head against the keys, online softmax seeded with the sink."""
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    m_mask = offs_m < T
    q = tl.load(q_ptr + offs_m[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=m_mask[:, None],
                other=0.0).to(DOT_DTYPE)
    q_pos = tl.load(q_pos_ptr + offs_m, mask=m_mask, other=-1)
    q_hi = tl.max(q_pos, axis=0)
    q_lo = tl.min(tl.where(m_mask, q_pos, q_hi), axis=0)
    sink = tl.load(sinks_ptr + head).to(tl.float32) * _LOG2E
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + sink
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    # Which key blocks can this query block see at all? A scan over k_pos alone (SCAN blocks per step, from L2)
    # bounds the main loop: for a cache slice that is the causal / sliding-window band.
    n_kb = tl.cdiv(S, BLOCK_N)
    first = n_kb
    last = -1
    for kb0 in range(0, n_kb, SCAN):
        kbs = kb0 + tl.arange(0, SCAN)
        offs = kbs[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        kp = tl.load(k_pos_ptr + offs, mask=offs < S, other=-1)
        seen = (kp >= 0) & (kp <= q_hi)
        if HAS_WINDOW:
            seen = seen & (q_lo - kp < window)
        any_seen = tl.max(seen.to(tl.int32), axis=1) > 0
        first = tl.minimum(first, tl.min(tl.where(any_seen, kbs, n_kb), axis=0))
        last = tl.maximum(last, tl.max(tl.where(any_seen, kbs, -1), axis=0))
    for start_n in range(first * BLOCK_N, (last + 1) * BLOCK_N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_pos = tl.load(k_pos_ptr + offs_n, mask=offs_n < S, other=-1)
        # Inside the band, skip blocks nobody in this query block sees (empty ring slots, out-of-order keys).
        seen = (k_pos >= 0) & (k_pos <= q_hi)
        if HAS_WINDOW:
            seen = seen & (q_lo - k_pos < window)
        if tl.max(seen.to(tl.int32), axis=0) > 0:
            n_mask = offs_n < S
            k = tl.load(k_ptr + offs_n[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                        mask=n_mask[:, None], other=0.0).to(DOT_DTYPE)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            s = tl.where(_visible(q_pos, k_pos, window, HAS_WINDOW), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + offs_n[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                        mask=n_mask[:, None], other=0.0).to(DOT_DTYPE)
            acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision="ieee")
            m_i = m_new
    out = acc / (l_i + tl.exp2(sink - m_i))[:, None]
    tl.store(out_ptr + offs_m[:, None] * stride_ot + head * HEAD_D + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None])


@triton.jit
def _prefetch_l2(ptrs):
    """Ask L2 for the lines at ``ptrs`` (no registers, no ordering): a hint that is always safe to give."""
    return tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, sinks_ptr, q_pos_ptr, k_pos_ptr, out_ptr, acc_ws, ml_ws,
                   S, ROWS, keys_per_split, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_ot, qk_scale, window,
                   GROUP: tl.constexpr, HEAD_D: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, DOT_DTYPE: tl.constexpr, PDL: tl.constexpr):
    """One program: every query row (token t, head kv_head*GROUP + g) of one KV head, over one span of keys.

    With SPLIT the un-normalised partial (acc, max, sum) goes to the workspace for the combine kernel; without it
    the program finishes the softmax (sink included) itself.

    With PDL the program first lets the next kernel launch and asks L2 for its first block of keys, values and
    key positions, then waits for the RoPE kernel: those lines are in HBM (a decode step streams GBs of weights
    through L2 between two visits of a layer's cache), and the slot RoPE writes now is read after the wait, from
    L2, like every other line (a prefetch hint never returns stale data).
    """
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    if PDL:
        pdl.signal(PDL)
        first = split * keys_per_split + tl.arange(0, BLOCK_N)
        ahead = first < S
        _prefetch_l2(tl.where(ahead, k_ptr + first * stride_kt + kv_head * stride_kh, k_ptr))
        _prefetch_l2(tl.where(ahead, v_ptr + first * stride_vt + kv_head * stride_vh, v_ptr))
        _prefetch_l2(tl.where(ahead, k_pos_ptr + first, k_pos_ptr))
        pdl.wait_only(PDL)
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_D)
    r_mask = offs_r < ROWS
    tok = offs_r // GROUP
    head = kv_head * GROUP + offs_r % GROUP
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=r_mask[:, None], other=0.0).to(DOT_DTYPE)
    q_pos = tl.load(q_pos_ptr + tok, mask=r_mask, other=-1)
    q_hi = tl.max(q_pos, axis=0)
    q_lo = tl.min(tl.where(r_mask, q_pos, q_hi), axis=0)
    m_i = tl.zeros([BLOCK_R], dtype=tl.float32) + _NEG
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_D], dtype=tl.float32)
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, S)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_pos = tl.load(k_pos_ptr + offs_n, mask=offs_n < hi, other=-1)
        # Loads are masked to keys some row can see: empty or future slots cost no memory traffic.
        seen = (k_pos >= 0) & (k_pos <= q_hi)
        if HAS_WINDOW:
            seen = seen & (q_lo - k_pos < window)
        k = tl.load(k_ptr + offs_n[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                    mask=seen[:, None], other=0.0).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        s = tl.where(_visible(q_pos, k_pos, window, HAS_WINDOW), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + offs_n[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                    mask=seen[:, None], other=0.0).to(DOT_DTYPE)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision="ieee")
        m_i = m_new
    if SPLIT:
        n_split = tl.num_programs(1)
        base = kv_head * n_split + split
        tl.store(acc_ws + (base * BLOCK_R + offs_r[:, None]) * HEAD_D + offs_d[None, :], acc)
        tl.store(ml_ws + (base * 2) * BLOCK_R + offs_r, m_i)
        tl.store(ml_ws + (base * 2 + 1) * BLOCK_R + offs_r, l_i)
    else:
        sink = tl.load(sinks_ptr + head, mask=r_mask, other=0.0).to(tl.float32) * _LOG2E
        m = tl.maximum(m_i, sink)
        scale = tl.exp2(m_i - m)
        out = acc * (scale / (l_i * scale + tl.exp2(sink - m)))[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * HEAD_D + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=r_mask[:, None])


@triton.jit
def _combine_kernel(acc_ws, ml_ws, sinks_ptr, out_ptr, n_split, stride_ot,
                    GROUP: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT_PAD: tl.constexpr,
                    PDL: tl.constexpr):
    """One program: one query row; merges the per-split partials and the sink."""
    pdl.wait(PDL)
    kv_head = tl.program_id(0)
    r = tl.program_id(1)
    tok = r // GROUP
    head = kv_head * GROUP + r % GROUP
    offs_s = tl.arange(0, SPLIT_PAD)
    s_mask = offs_s < n_split
    base = kv_head * n_split + offs_s
    m_s = tl.load(ml_ws + (base * 2) * BLOCK_R + r, mask=s_mask, other=_NEG)
    l_s = tl.load(ml_ws + (base * 2 + 1) * BLOCK_R + r, mask=s_mask, other=0.0)
    sink = tl.load(sinks_ptr + head).to(tl.float32) * _LOG2E
    m = tl.maximum(tl.max(m_s, axis=0), sink)
    w = tl.exp2(m_s - m)
    denom = tl.sum(l_s * w, axis=0) + tl.exp2(sink - m)
    offs_d = tl.arange(0, HEAD_D)
    acc = tl.load(acc_ws + (base[:, None] * BLOCK_R + r) * HEAD_D + offs_d[None, :], mask=s_mask[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / denom
    tl.store(out_ptr + tok * stride_ot + head * HEAD_D + offs_d, out.to(out_ptr.dtype.element_ty))


# Launch shapes, chosen on an H200 (see .notes/kernels.md); the benchmark script overrides them to sweep.
PREFILL_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
PREFILL_CONFIG_HOPPER = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}  # spills elsewhere
# Decode: up to this many keys one program per KV head does it all (no combine launch); above it, splits of at least
# keys_per_split keys, at most max_programs programs in all.
DECODE_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "split_min_keys": 256, "keys_per_split": 64,
                 "max_programs": 1024}




def prefill_config(q: torch.Tensor) -> dict:
    """The launch shape for this device: larger query blocks where wgmma keeps the accumulators cheap (sm_90)."""
    hopper = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9
    return PREFILL_CONFIG_HOPPER if hopper else PREFILL_CONFIG


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
           k_pos: torch.Tensor) -> None:
    if not (q.is_cuda or interpreting()):
        raise ValueError("the Triton attention needs CUDA tensors (or TRITON_INTERPRET=1); use attention_reference")
    T, Hq, D = q.shape
    S, Hkv, Dk = k.shape
    if v.shape != k.shape or Dk != D or Hq % Hkv or sinks.shape != (Hq,) or q_pos.shape != (T,) \
            or k_pos.shape != (S,):
        raise ValueError(f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"sinks {tuple(sinks.shape)}, q_pos {tuple(q_pos.shape)}, k_pos {tuple(k_pos.shape)}")
    if D < 16 or D & (D - 1):
        raise ValueError(f"head dim must be a power of two >= 16, got {D}")
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("q, k and v need a contiguous last dimension")


def attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
                      k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
    """Flash attention over blocks of queries, one program per (query block, query head)."""
    _check(q, k, v, sinks, q_pos, k_pos)
    T, Hq, D = q.shape
    S, Hkv, _ = k.shape
    out = torch.empty(T, Hq * D, dtype=q.dtype, device=q.device)
    cfg = prefill_config(q)
    _prefill_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), Hq)](
        q, k, v, sinks, q_pos.contiguous(), k_pos.contiguous(), out, T, S, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), v.stride(0), v.stride(1), out.stride(0), sm_scale * LOG2E, window or 0,
        GROUP=Hq // Hkv, HEAD_D=D, HAS_WINDOW=window is not None, SCAN=16, DOT_DTYPE=dot_dtype(q.dtype), **cfg)
    return out


def attention_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
                     k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
    """Flash decoding for a few query tokens (T * Hq/Hkv <= DECODE_MAX_ROWS): keys split over programs."""
    _check(q, k, v, sinks, q_pos, k_pos)
    T, Hq, D = q.shape
    S, Hkv, _ = k.shape
    group = Hq // Hkv
    rows = T * group
    if rows > DECODE_MAX_ROWS:
        raise ValueError(f"decode attention takes at most {DECODE_MAX_ROWS} query rows per KV head, got {rows}")
    block_r = max(16, triton.next_power_of_2(rows))
    cfg = dict(DECODE_CONFIG)
    split_min_keys, keys_per_split, max_programs = (cfg.pop(k) for k in ("split_min_keys", "keys_per_split",
                                                                          "max_programs"))
    n_split = 1 if S <= split_min_keys else min(triton.cdiv(S, keys_per_split), max(1, max_programs // Hkv))
    keys_per_split = triton.cdiv(triton.cdiv(S, n_split), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    n_split = triton.cdiv(S, keys_per_split)
    out = torch.empty(T, Hq * D, dtype=q.dtype, device=q.device)
    split = n_split > 1
    acc_ws = torch.empty((Hkv * n_split * block_r * D) if split else 1, dtype=torch.float32, device=q.device)
    ml_ws = torch.empty((Hkv * n_split * 2 * block_r) if split else 1, dtype=torch.float32, device=q.device)
    _decode_kernel[(Hkv, n_split)](
        q, k, v, sinks, q_pos.contiguous(), k_pos.contiguous(), out, acc_ws, ml_ws, S, rows, keys_per_split,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
        sm_scale * LOG2E, window or 0, GROUP=group, HEAD_D=D, HAS_WINDOW=window is not None, BLOCK_R=block_r,
        SPLIT=split, DOT_DTYPE=dot_dtype(q.dtype), **cfg, **pdl.launch(q))
    if split:
        _combine_kernel[(Hkv, rows)](acc_ws, ml_ws, sinks, out, n_split, out.stride(0), GROUP=group, HEAD_D=D,
                                     BLOCK_R=block_r, SPLIT_PAD=triton.next_power_of_2(n_split), **pdl.launch(q))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
              k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
    """q [T,Hq,D], k/v [S,Hkv,D], sinks [Hq], q_pos [T], k_pos [S] -> [T, Hq*D] with the Triton kernels."""
    T, Hq, _ = q.shape
    rows = T * (Hq // k.shape[1])
    path = attention_decode if rows <= DECODE_MAX_ROWS else attention_prefill
    return path(q, k, v, sinks, q_pos, k_pos, sm_scale, window)
