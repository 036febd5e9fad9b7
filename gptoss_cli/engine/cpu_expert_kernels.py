"""The numba kernels behind cpu_experts.py and cpu_share.py (imported only when offloaded experts run on the CPU).

Multi-threaded over output rows (``prange``), GIL released, compiled once per machine into numba's on-disk cache.
See cpu_experts.py for the decode and the precision rules, cpu_share.py for ``serve``.
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
from gptoss_kernels import mxfp4
from llvmlite import binding as _llvm_binding
from llvmlite import ir as _llvm_ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_FASTMATH = {"reassoc", "contract"}
_LLVM_MAJOR = _llvm_binding.llvm_version_info[0]
_I32 = np.int32
_U16 = np.uint16
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


@intrinsic
def _as_i32(typingctx, value):
    """Reinterpret fp32 bits as int32."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _llvm_ir.IntType(32))

    return sig, codegen


@intrinsic
def _f16_to_f32(typingctx, bits):
    """uint16 fp16 bit pattern -> fp32 (exact; vectorised as one vcvtph2ps per 8 or 16 lanes on x86 with F16C)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _llvm_ir.HalfType()), _llvm_ir.FloatType())

    return sig, codegen


def _element_pointer(context, builder, aryty, ary_value, index):
    """LLVM pointer to element ``index`` of a 1-D array (for the intrinsics below)."""
    ary = context.make_array(aryty)(context, builder, ary_value)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Ask the CPU to bring the cache line holding arr[idx] in (``llvm.prefetch``: read, keep, data)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        i8p = _llvm_ir.IntType(8).as_pointer()
        i32 = _llvm_ir.IntType(32)
        name = "llvm.prefetch.p0" if _LLVM_MAJOR >= 15 else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(builder.module, _llvm_ir.FunctionType(
            _llvm_ir.VoidType(), [i8p, i32, i32, i32]), name)
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _targets_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (its features: NUMBA_CPU_FEATURES if set, else the host's)."""
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features:
        return "+avx512f" in features.split(",")
    return bool(_llvm_binding.get_host_cpu_features().get("avx512f"))


AVX512 = _targets_avx512()


@intrinsic
def _row_dot_permute(typingctx, row, srow, xe, xo):
    """``_row_dot``'s fast path in 16-lane AVX-512 vectors, one scale group (16 bytes, 32 codes) per step: the
    bytes widen to 32-bit lanes and ``vpermps`` looks each code up in a register-held table of the 16 FP4 values
    (it reads only an index's low 4 bits, so the low nibble needs no mask and the high one a shift), then
    ``acc += (lo * xe + hi * xo) * 2**(s - 127)``. 8 vector instructions a group against ~24 for the fp16 decode,
    which Intel cores issue at two 512-bit operations a cycle. Contiguous arrays only; scales 1..254 (callers keep
    to 2..240, as the fp16 path)."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (row, srow, xe, xo)):
        return None
    sig = types.float32(row, srow, xe, xo)

    def codegen(context, builder, signature, args):
        f32, i32, i8 = _llvm_ir.FloatType(), _llvm_ir.IntType(32), _llvm_ir.IntType(8)
        v16f, v16i, v16b = _llvm_ir.VectorType(f32, 16), _llvm_ir.VectorType(i32, 16), _llvm_ir.VectorType(i8, 16)
        arrays = [context.make_array(ty)(context, builder, value) for ty, value in zip(signature.args, args)]
        row_p, srow_p, xe_p, xo_p = (a.data for a in arrays)
        groups = builder.udiv(builder.extract_value(arrays[0].shape, 0), context.get_constant(types.intp, 16))
        table = _llvm_ir.Constant(v16f, [float(v) for v in mxfp4.FP4_VALUES])
        permute = cgutils.get_or_insert_function(builder.module, _llvm_ir.FunctionType(v16f, [v16f, v16i]),
                                                 "llvm.x86.avx512.permvar.sf.512")
        fma = cgutils.get_or_insert_function(builder.module, _llvm_ir.FunctionType(v16f, [v16f, v16f, v16f]),
                                             "llvm.fma.v16f32")
        acc = cgutils.alloca_once_value(builder, _llvm_ir.Constant(v16f, [0.0] * 16))
        with cgutils.for_range(builder, groups) as loop:
            g = loop.index
            at = builder.mul(g, context.get_constant(types.intp, 16))
            codes = builder.zext(builder.load(builder.bitcast(builder.gep(row_p, [at]), v16b.as_pointer()),
                                              align=1), v16i)
            lo = builder.call(permute, [table, codes])
            hi = builder.call(permute, [table, builder.lshr(codes, _llvm_ir.Constant(v16i, [4] * 16))])
            x_even = builder.load(builder.bitcast(builder.gep(xe_p, [at]), v16f.as_pointer()), align=4)
            x_odd = builder.load(builder.bitcast(builder.gep(xo_p, [at]), v16f.as_pointer()), align=4)
            pair = builder.call(fma, [hi, x_odd, builder.fmul(lo, x_even)])
            bits = builder.shl(builder.zext(builder.load(builder.gep(srow_p, [g])), i32), i32(23))
            scale = builder.bitcast(bits, f32)
            splat = builder.insert_element(_llvm_ir.Constant(v16f, _llvm_ir.Undefined), scale, i32(0))
            splat = builder.shuffle_vector(splat, splat, _llvm_ir.Constant(v16i, [0] * 16))
            builder.store(builder.call(fma, [pair, splat, builder.load(acc)]), acc)
        total = builder.load(acc)
        for width in (8, 4, 2, 1):  # a tree of halves: 16 lanes to one
            half = builder.shuffle_vector(total, total, _llvm_ir.Constant(
                _llvm_ir.VectorType(i32, 16), list(range(width, 2 * width)) + [0] * (16 - width)))
            total = builder.fadd(total, half)
        return builder.extract_element(total, i32(0))

    return sig, codegen


_PREFETCH_ROWS = 2  # rows ahead: a short row segment at a 1,440-byte stride is not one the hardware prefetches


@njit(inline="always")
def _row_dot(row, srow, xe, xo):
    """sum_k W[k] x[k] for one packed row: ``row`` [G*16] bytes, ``srow`` [G] scales, x as even/odd halves.

    An AVX-512 target takes ``_row_dot_permute``; elsewhere each code becomes the fp16 ``fp4 * 2**-14`` in 16-bit
    lanes (magnitude bits to 9..11, sign to 15: two shifts, two masks, an or), then fp32 by a hardware conversion;
    a pair's products are scaled by its group's ``2**(s - 113)``. Exact for every code (0.5 is an fp16 subnormal,
    converted exactly) and for scales 2..240, where every factor is a normal fp32; a row with any other scale
    takes the plain table path."""
    n = row.shape[0]
    lo_s, hi_s = 255, 0
    for g in range(srow.shape[0]):
        s = srow[g]
        lo_s = min(lo_s, s)
        hi_s = max(hi_s, s)
    acc = np.float32(0.0)
    if AVX512 and lo_s >= 2 and hi_s <= 240 and n % 16 == 0:
        acc = _row_dot_permute(row, srow, xe, xo)
    elif lo_s >= 2 and hi_s <= 240:
        for j in range(n):
            b = _U16(row[j])
            lo = _f16_to_f32(_U16(_U16(_U16(b & _U16(7)) << _U16(9)) | _U16(_U16(b & _U16(8)) << _U16(12))))
            hi = _f16_to_f32(_U16(_U16(_U16(b & _U16(0x70)) << _U16(5)) | _U16(_U16(b & _U16(0x80)) << _U16(8))))
            scale = _as_f32(_I32(_I32(_I32(srow[j >> 4]) + _I32(14)) << _I32(23)))
            acc += (lo * xe[j] + hi * xo[j]) * scale
    else:  # a scale whose products leave the normal range: the plain table decode (exact, slower)
        for j in range(n):
            f = _POW2[srow[j >> 4]]
            b = row[j]
            acc += (_FP4[b & 15] * f) * xe[j] + (_FP4[b >> 4] * f) * xo[j]
    return acc


@njit(inline="always")
def _segment_dot(blocks, scales, r, end, row_bytes, G, b0, g0, xe, xo):
    """``_row_dot`` of bytes [b0, row_bytes) of packed row r (``blocks``/``scales``: one expert, rows flattened), after
    requesting the same segment of row r + _PREFETCH_ROWS (if below ``end``): rows taken one after another."""
    ahead = r + _PREFETCH_ROWS
    if ahead < end:
        for q in range(ahead * row_bytes + b0, (ahead + 1) * row_bytes, 64):
            _prefetch(blocks, q)
        _prefetch(scales, ahead * G + g0)
    return _row_dot(blocks[r * row_bytes + b0:(r + 1) * row_bytes], scales[r * G + g0:(r + 1) * G], xe, xo)


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
    """out[r] = sum_j weights[j] * (row r of expert ids[j] applied to h_j, plus bias); blocks of 64 rows split
    over threads, expert by expert inside a block, rows requested ahead (as ``_down_part``)."""
    n = ids.shape[0]
    E, R, G, _ = blocks.shape
    row_bytes = G * 16
    flat = blocks.reshape(E, R * row_bytes)
    flat_scales = scales.reshape(E, R * G)
    for block in prange((R + 63) // 64):
        r0, r1 = block * 64, min(R, block * 64 + 64)
        for r in range(r0, r1):
            out[r] = np.float32(0.0)
        for j in range(n):
            e = ids[j]
            rows, srows = flat[e], flat_scales[e]
            for r in range(r0, r1):
                y = _segment_dot(rows, srows, r, r1, row_bytes, G, 0, 0, he[j], ho[j])
                out[r] += (y + bias[e, r]) * weights[j]


def set_threads(n: int) -> None:
    """numba's thread count for parallel kernels called from this thread (numba keeps it per calling thread)."""
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


# ---------------------------------------------------------------------------------------------------------------
# The CPU share of a decode step (cpu_share.py): a team of threads, each running ``serve_part`` in a loop that never
# returns to Python while it serves, so it never needs the GIL (the main thread may hold it while it waits for the
# GPU, and the GPU may be waiting for this loop). The team splits each request statically and meets at spin
# barriers on atomic counters: a parallel region of a threading layer wakes its sleeping threads through the OS for
# every call, which cost more than the work (measured: a 0.9 ms share took 2.5x its isolated time on the H200 host).
# ---------------------------------------------------------------------------------------------------------------


@intrinsic
def _load_acquire(typingctx, arr, idx):
    """arr[idx] (int32 or int64) read from memory on every call, with acquire order: what a writer stored before it
    is visible after it. The GPU writes the flags over PCIe; the team's threads write the counters."""
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", signature.args[0].dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def _store_release(typingctx, arr, idx, value):
    """arr[idx] = value with release order: every store before it is visible to a reader that sees it."""
    sig = types.void(arr, idx, arr.dtype)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "release", signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fetch_add(typingctx, arr, idx, value):
    """Atomically arr[idx] += value (acquire-release); returns the value before."""
    sig = arr.dtype(arr, idx, arr.dtype)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "acq_rel")

    return sig, codegen


# Idles the calling thread for a few hundred microseconds, or gives its core to another thread, without the GIL (C
# symbols, so serve_part stays cacheable)
if sys.platform == "win32":
    _SLEEP, _SLEEP_ARG = types.ExternalFunction("Sleep", types.void(types.uint32)), 1  # milliseconds
    _YIELD = types.ExternalFunction("SwitchToThread", types.int32())
else:
    _SLEEP, _SLEEP_ARG = types.ExternalFunction("usleep", types.int32(types.uint32)), 200
    _YIELD = types.ExternalFunction("sched_yield", types.int32())
_SPINS_BEFORE_YIELD = 4096  # at a barrier: a teammate that lost its core gets it back sooner
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


@intrinsic
def _pause(typingctx):
    """A spin-wait hint (x86 ``pause``; nothing elsewhere): a spinning thread leaves its core's issue slots to a
    hyper-thread sibling that may be a teammate doing the work, and leaves the loop without a memory-order stall."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, _llvm_ir.FunctionType(_llvm_ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _round_bf16(v):
    """fp32 -> the nearest bf16 (ties to even), as fp32 (finite inputs)."""
    b = _as_i32(np.float32(v))
    b = _I32(_I32(b + _I32(0x7FFF) + _I32(_I32(b >> _I32(16)) & _I32(1))) & _I32(-65536))
    return _as_f32(b)


@njit(fastmath=_FASTMATH, nogil=True, cache=True)
def _gate_up_part(k, team, gu_blocks, gu_scales, gu_bias, ids, xe, xo, split, alpha, limit, bf16, h):
    """Thread k of ``team``: its share of h[j, c - split] = clamped SwiGLU of gate_up rows 2c, 2c+1 (plus bias) of
    expert ids[j] applied to x, for c in [split, I), rounded to bf16 with ``bf16``; stored even/odd in h [k, 2, w/2]."""
    n = ids.shape[0]
    E, R1, G1, _ = gu_blocks.shape
    width = R1 // 2 - split
    units = n * width
    flat = gu_blocks.reshape(E, R1, G1 * 16)
    for t in range(k * units // team, (k + 1) * units // team):
        j = t // width
        local = t - j * width
        c = split + local
        e = ids[j]
        gate = _row_dot(flat[e, 2 * c], gu_scales[e, 2 * c], xe, xo) + gu_bias[e, 2 * c]
        up = _row_dot(flat[e, 2 * c + 1], gu_scales[e, 2 * c + 1], xe, xo) + gu_bias[e, 2 * c + 1]
        gate = min(gate, limit)
        up = min(max(up, -limit), limit)
        v = gate * (np.float32(1.0) / (np.float32(1.0) + np.exp(-(alpha * gate)))) * (up + np.float32(1.0))
        h[j, local & 1, local >> 1] = _round_bf16(v) if bf16 else v


@njit(fastmath=_FASTMATH, nogil=True, cache=True)
def _down_part(k, team, dn_blocks, dn_scales, ids, wts, split, h, out):
    """Thread k of ``team``: its rows of out[r] = sum_j wts[j] * sum_{c >= split} W2_{ids[j]}[r, c] * h_j[c] (no
    down bias: the GPU's share adds it). Expert by expert, each row's segment [split/2, I/2) of bytes requested a
    couple of rows ahead: 3x faster than row by row for the short segments of a CPU share (development machine)."""
    n = ids.shape[0]
    E, H, G2, _ = dn_blocks.shape
    row_bytes = G2 * 16
    flat = dn_blocks.reshape(E, H * row_bytes)
    flat_scales = dn_scales.reshape(E, H * G2)
    b0, g0 = split // 2, split // 32
    r0, r1 = k * H // team, (k + 1) * H // team
    for r in range(r0, r1):
        out[r] = np.float32(0.0)
    for j in range(n):
        blocks, scales, w = flat[ids[j]], flat_scales[ids[j]], wts[j]
        for r in range(r0, r1):
            out[r] += w * _segment_dot(blocks, scales, r, r1, row_bytes, G2, b0, g0, h[j, 0], h[j, 1])


@njit(nogil=True, cache=True)
def serve_part(k, team, flags, dones, stop, counters, ids, wts, xs, outs, gu_blocks, gu_scales, gu_bias, dn_blocks,
               dn_scales, split, alpha, limit, bf16, h, hot_scans, light_sleeps):
    """Thread k of a team of ``team`` threads serving requests until ``stop[0]`` is set; returns how many it served.

    A request for slot s is ``flags[s] != dones[s]`` (one at a time: the GPU waits for each before the next):
    every thread computes its part of the gate_up columns [split, I) of slot s's layer (``gu_blocks[s]`` ...),
    meets the others at a barrier (``counters[0]``), computes its rows of the down sum into ``outs[s]``, and the
    last to finish (``counters[1]``) sets ``dones[s] = flags[s]``. Polls without sleeping for ``hot_scans`` empty
    scans after the last request, then sleeps a little between scans (``light_sleeps`` times), then ten times as
    long (a chat waiting for its user wakes each thread a few hundred times a second, not thousands)."""
    slots = flags.shape[0]
    half = xs.shape[1] // 2
    served = 0
    idle = 0
    while True:
        slot = -1
        while slot < 0:
            if _load_acquire(stop, 0) != 0:
                return served
            for s in range(slots):
                if _load_acquire(flags, s) != _load_acquire(dones, s):
                    slot = s
                    break
            if slot < 0:
                idle += 1
                if idle > hot_scans + light_sleeps:
                    _SLEEP(_SLEEP_ARG * 10)
                elif idle > hot_scans:
                    _SLEEP(_SLEEP_ARG)
                else:
                    _pause()
        idle = 0
        seq = _load_acquire(flags, slot)
        served += 1
        target = np.int64(served) * np.int64(team)
        _gate_up_part(k, team, gu_blocks[slot], gu_scales[slot], gu_bias[slot], ids[slot], xs[slot, :half],
                      xs[slot, half:], split, alpha, limit, bf16, h)
        _fetch_add(counters, 0, np.int64(1))
        spins = 0
        while _load_acquire(counters, 0) < target:
            if _load_acquire(stop, 0) != 0:
                return served
            _pause()
            spins += 1
            if spins % _SPINS_BEFORE_YIELD == 0:
                _YIELD()
        _down_part(k, team, dn_blocks[slot], dn_scales[slot], ids[slot], wts[slot], split, h, outs[slot])
        if _fetch_add(counters, 1, np.int64(1)) + 1 == target:
            _store_release(dones, slot, seq)
        else:
            spins = 0
            while _load_acquire(dones, slot) != seq:
                if _load_acquire(stop, 0) != 0:
                    return served
                _pause()
                spins += 1
                if spins % _SPINS_BEFORE_YIELD == 0:
                    _YIELD()
