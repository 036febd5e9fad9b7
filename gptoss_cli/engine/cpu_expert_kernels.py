"""The numba kernels behind cpu_experts.py (imported only when an offloaded layer's experts run on the CPU).

Multi-threaded over output rows (``prange``), GIL released, compiled once per machine into numba's on-disk cache.
See cpu_experts.py for the decode and the precision rules.
"""

from __future__ import annotations

import numpy as np
from gptoss_kernels import mxfp4
from llvmlite import ir as _llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic

_FASTMATH = {"reassoc", "contract"}
_I32 = np.int32
_SIGN = np.int32(-(2**31))
# c(m3) in nibble m3: 0 -> 0 (masked), 1 -> 0 (0.5: the exponent below the scale's), m3 >= 2 -> m3
_CODE_TABLE = np.int32(sum((m3 if m3 >= 2 else 0) << (4 * m3) for m3 in range(8)))
_FP4 = np.array(mxfp4.FP4_VALUES, dtype=np.float32)
# 2**(s - 127) as fp32 for every E8M0 byte: 2**-127 is a subnormal, 255 reads as inf (as ldexp gives)
_POW2 = (np.arange(256, dtype=np.int32) << 23).view(np.float32).copy()
_POW2[0] = np.int32(1 << 22).view(np.float32)


@intrinsic
def _as_f32(typingctx, bits):
    """Reinterpret int32 bits as fp32 (an LLVM bitcast: a no-op in vector registers)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _llvm_ir.FloatType())

    return sig, codegen


@njit(inline="always")
def _decode(m3, sign, exp_add):
    """fp32 ``fp4 * 2**(s8-127)`` from the magnitude code m3 (int32 0..7), the sign already at bit 31 and
    ``(s8 - 1) << 23``; every operation stays in 32-bit lanes (numba would widen plain ints to 64 bits)."""
    c = _I32(_I32(_CODE_TABLE >> _I32(m3 << _I32(2))) & _I32(15))
    v = _I32(_I32(c << _I32(22)) + exp_add)
    v = v if m3 != _I32(0) else _I32(0)
    return _as_f32(_I32(v | sign))


@njit(inline="always")
def _row_dot(row, srow, xe, xo):
    """sum_k W[k] x[k] for one packed row: ``row`` [G*16] bytes, ``srow`` [G] scales, x as even/odd halves."""
    n = row.shape[0]
    lo_s, hi_s = 255, 0
    for g in range(srow.shape[0]):
        s = srow[g]
        lo_s = min(lo_s, s)
        hi_s = max(hi_s, s)
    acc = np.float32(0.0)
    if lo_s >= 2 and hi_s <= 252:
        for j in range(n):
            exp_add = _I32(_I32(_I32(srow[j >> 4]) - _I32(1)) << _I32(23))
            b = _I32(row[j])
            lo = _decode(_I32(b & _I32(7)), _I32(_I32(b << _I32(28)) & _SIGN), exp_add)
            hi = _decode(_I32(_I32(b >> _I32(4)) & _I32(7)), _I32(_I32(b << _I32(24)) & _SIGN), exp_add)
            acc += lo * xe[j] + hi * xo[j]
    else:  # a scale whose products leave the normal range: the plain table decode (exact, slower)
        for j in range(n):
            f = _POW2[srow[j >> 4]]
            b = row[j]
            acc += (_FP4[b & 15] * f) * xe[j] + (_FP4[b >> 4] * f) * xo[j]
    return acc


@njit(parallel=True, fastmath=_FASTMATH, nogil=True, cache=True)
def gate_up_swiglu(blocks, scales, bias, ids, xe, xo, alpha, limit, h):
    """h[j, c] = swiglu(row 2c, row 2c+1 of expert ids[j] applied to x, plus bias); rows split over threads."""
    n = ids.shape[0]
    E, R, G, _ = blocks.shape
    half = R // 2
    flat = blocks.reshape(E, R, G * 16)
    for t in prange(n * half):
        j = t // half
        c = t - j * half
        e = ids[j]
        gate = _row_dot(flat[e, 2 * c], scales[e, 2 * c], xe, xo) + bias[e, 2 * c]
        up = _row_dot(flat[e, 2 * c + 1], scales[e, 2 * c + 1], xe, xo) + bias[e, 2 * c + 1]
        gate = min(gate, limit)
        up = min(max(up, -limit), limit)
        sig = np.float32(1.0) / (np.float32(1.0) + np.exp(-(alpha * gate)))
        h[j, c] = gate * sig * (up + np.float32(1.0))


@njit(parallel=True, fastmath=_FASTMATH, nogil=True, cache=True)
def down_mix(blocks, scales, bias, ids, weights, he, ho, out):
    """out[r] = sum_j weights[j] * (row r of expert ids[j] applied to h_j, plus bias); rows split over threads."""
    n = ids.shape[0]
    E, R, G, _ = blocks.shape
    flat = blocks.reshape(E, R, G * 16)
    for r in prange(R):
        acc = np.float32(0.0)
        for j in range(n):
            e = ids[j]
            y = _row_dot(flat[e, r], scales[e, r], he[j], ho[j]) + bias[e, r]
            acc += y * weights[j]
        out[r] = acc


def set_threads(n: int) -> None:
    """numba's thread count for parallel kernels called from this thread (numba keeps it per calling thread)."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
