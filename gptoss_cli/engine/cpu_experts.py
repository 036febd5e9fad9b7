"""MXFP4 experts computed on the CPU, straight from the packed host copy (issue 9: experts the plan keeps in RAM).

One decode token needs k experts per layer; an offloaded layer's misses either cross PCIe (13.2 MB each for
gpt-oss) or are computed here, where the bytes already are. ``expert_mix`` returns, for one token x [H],

    sum_j w_j * (down_j(swiglu(gate_up_j(x) + b1_j)) + b2_j)

with exactly the math of ``gptoss_kernels.moe.moe_reference``: fp32 accumulation, the clamped SwiGLU over
interleaved gate (even) / up (odd) rows, h rounded to the activation dtype between the projections, experts summed
in the order given (duplicates count twice). The result stays fp32; the caller rounds once, after the sum.

The kernel (numba, multi-threaded over output rows, releasing the GIL) decodes each packed byte in vector
registers. On a CPU with AVX-512 it takes a scale group (16 bytes) at a time: the bytes widen to 32-bit lanes and
``vpermps`` looks each 4-bit code up in a register-held table of the 16 FP4 values, the group's products are summed
and scaled by ``2**(s8 - 127)`` (1 thread 3.1 -> 6.0 GB/s, 14 threads 23 -> 51 GB/s on the H200 host's Xeon; 1.8x
on the development machine's Zen 4). Elsewhere a code ``s e1 e0 m`` becomes, in a 16-bit lane, the fp16 bit pattern
of ``fp4 * 2**-14`` (magnitude bits to 9..11, the sign to 15; 0.5 is an fp16 subnormal), converted to fp32 by the
CPU's fp16 conversion (vcvtph2ps on x86), and each pair's products are scaled by ``2**(s8 - 113)``. Both are exact
for 2 <= s8 <= 240, where every factor is a normal fp32; a row with any other scale takes a plain table path.
Each row is one dot product of the decoded weights with x, de-interleaved into even/odd halves so both nibbles of a
byte feed contiguous lanes. The kernels are compiled with fastmath={'reassoc', 'contract'} only: the dot products may
be summed in vector lanes (and fused multiply-adds used), which changes only the summation order (fp32 rounding,
~1e-7 relative, the same freedom a BLAS sgemv has); no other IEEE rule is relaxed. Without numba a torch path
(dequantize, then matrix-vector products) computes the same, much more slowly.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gptoss_kernels import mxfp4

from ..hardware import cpu_cores

# numba is imported on first use, not with the engine: it costs ~0.3 s, and only offloaded decode needs it
HAVE_NUMBA = importlib.util.find_spec("numba") is not None and importlib.util.find_spec("llvmlite") is not None
_kernels_module = None
numba_error: str | None = None  # why numba could not be used, once that is known
ALPHA, LIMIT = 1.702, 7.0


def _prefer_512_bit_vectors() -> None:
    """On a CPU with AVX-512, let numba's LLVM use 512-bit vectors (it keeps to 256 bits on Intel cores by default):
    the expert kernel ran 21-24 % faster on the H200 host's Xeon (benchmarks/cpu_expert_threads.py, 1 and 15
    threads), the same on a Zen 4. Only before numba is first imported, and only if the user set no features."""
    if "numba" in sys.modules or "NUMBA_CPU_FEATURES" in os.environ:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"


def kernels():
    """The numba kernels (cpu_expert_kernels.py, compiled or loaded from numba's cache on first call), or None
    when numba is missing or fails to import (then the torch path runs)."""
    global _kernels_module, numba_error
    if _kernels_module is None and numba_error is None and HAVE_NUMBA:
        try:
            _prefer_512_bit_vectors()
            from . import cpu_expert_kernels
        except Exception as exc:  # noqa: BLE001 - a broken numba/llvmlite/numpy install must not break the engine
            numba_error = f"{type(exc).__name__}: {exc}"
        else:
            _kernels_module = cpu_expert_kernels
    return _kernels_module if HAVE_NUMBA else None


def default_threads() -> int:
    """CPU threads for expert work: every core this process may use but one, which keeps driving the GPU."""
    return max(1, cpu_cores() - 1)


# ---------------------------------------------------------------------------------------------------------------
# The public entry points
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class HostExperts:
    """One layer's experts as the CPU kernel reads them: numpy views of the packed host tensors (no copy) and
    fp32 copies of the biases (the offload keeps the originals on the GPU)."""

    gate_up_blocks: np.ndarray  # uint8 [E, 2I, H/32, 16]
    gate_up_scales: np.ndarray  # uint8 [E, 2I, H/32]
    gate_up_bias: np.ndarray  # fp32 [E, 2I]
    down_blocks: np.ndarray  # uint8 [E, H, I/32, 16]
    down_scales: np.ndarray  # uint8 [E, H, I/32]
    down_bias: np.ndarray  # fp32 [E, H]

    @classmethod
    def from_tensors(cls, gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                     down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor) -> HostExperts:
        def packed(t: torch.Tensor) -> np.ndarray:
            if t.dtype == torch.int32:  # re-laid for the GPU's decode (model/fast.py): a copy in the hub's layout
                t = mxfp4.from_paired(t.detach().cpu())
            if t.dtype != torch.uint8:
                raise TypeError(f"MXFP4 blocks and scales must be uint8, got {t.dtype}")
            return np.ascontiguousarray(t.detach().cpu().numpy())

        def fp32(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().float().cpu().numpy())

        return cls(packed(gate_up_blocks), packed(gate_up_scales), fp32(gate_up_bias), packed(down_blocks),
                   packed(down_scales), fp32(down_bias))

    @property
    def expert_bytes(self) -> int:
        """Packed bytes one expert's projections read (blocks and scales; biases are noise)."""
        return sum(a[0].nbytes for a in (self.gate_up_blocks, self.gate_up_scales, self.down_blocks,
                                         self.down_scales))


def _round_to(h: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """h rounded to the activation dtype and back to fp32, as the reference hands it between the projections."""
    if dtype == torch.float32:
        return h
    return torch.from_numpy(h).to(dtype).float().numpy()


def expert_mix(x: torch.Tensor | np.ndarray, experts: HostExperts, ids: Sequence[int],
               weights: Sequence[float] | np.ndarray, act_dtype: torch.dtype = torch.float32,
               alpha: float = ALPHA, limit: float = LIMIT, threads: int | None = None,
               use_numba: bool | None = None) -> np.ndarray:
    """fp32 [H]: ``sum_j weights[j] * expert_{ids[j]}(x)`` for one token ``x`` [H] (see the module docstring).

    ``threads``: CPU threads for the numba kernel (default: all but one core; numba's setting is per calling
    thread, so a worker thread can hold its own). ``use_numba=False`` forces the torch path."""
    x32 = np.ascontiguousarray(np.asarray(x.detach().float().cpu() if isinstance(x, torch.Tensor) else x,
                                          dtype=np.float32).reshape(-1))
    ids_arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    w_arr = np.ascontiguousarray(np.asarray(weights, dtype=np.float32).reshape(-1))
    E, R1, G1, _ = experts.gate_up_blocks.shape
    H = experts.down_blocks.shape[1]
    if x32.shape[0] != G1 * 32 or H != G1 * 32 or R1 != 2 * experts.down_blocks.shape[2] * 32:
        raise ValueError(f"expert shapes {experts.gate_up_blocks.shape} / {experts.down_blocks.shape} do not fit "
                         f"an activation of size {x32.shape[0]}")
    if ids_arr.shape != w_arr.shape:
        raise ValueError(f"{ids_arr.shape[0]} expert ids but {w_arr.shape[0]} weights")
    if ids_arr.size and (ids_arr.min() < 0 or ids_arr.max() >= E):
        raise ValueError(f"expert ids must be in 0..{E - 1}, got {ids_arr.tolist()}")
    if ids_arr.size == 0:
        return np.zeros(H, dtype=np.float32)
    k = kernels() if use_numba is None or use_numba else None
    if use_numba and k is None:
        raise RuntimeError(f"numba is not usable here: {numba_error or 'not installed'}")
    if k is None:
        return _expert_mix_torch(x32, experts, ids_arr, w_arr, act_dtype, alpha, limit)
    k.set_threads(threads or default_threads())
    n, inter = ids_arr.shape[0], R1 // 2
    h = np.empty((n, inter), dtype=np.float32)
    k.gate_up_swiglu(experts.gate_up_blocks, experts.gate_up_scales, experts.gate_up_bias, ids_arr,
                    np.ascontiguousarray(x32[0::2]), np.ascontiguousarray(x32[1::2]), np.float32(alpha),
                    np.float32(limit), h)
    h = _round_to(h, act_dtype)
    out = np.empty(H, dtype=np.float32)
    k.down_mix(experts.down_blocks, experts.down_scales, experts.down_bias, ids_arr, w_arr,
              np.ascontiguousarray(h[:, 0::2]), np.ascontiguousarray(h[:, 1::2]), out)
    return out


def _expert_mix_torch(x: np.ndarray, experts: HostExperts, ids: np.ndarray, weights: np.ndarray,
                      act_dtype: torch.dtype, alpha: float, limit: float) -> np.ndarray:
    """The same sum with torch ops: each expert dequantized to fp32, then two matrix-vector products."""
    xt = torch.from_numpy(x)
    out = torch.zeros(experts.down_blocks.shape[1], dtype=torch.float32)
    for e, w in zip(ids.tolist(), weights.tolist()):
        w1 = mxfp4.dequantize(torch.from_numpy(experts.gate_up_blocks[e]),
                              torch.from_numpy(experts.gate_up_scales[e]), torch.float32)
        gate_up = w1 @ xt + torch.from_numpy(experts.gate_up_bias[e])
        del w1
        gate = gate_up[0::2].clamp(max=limit)
        up = gate_up[1::2].clamp(min=-limit, max=limit)
        h = (gate * torch.sigmoid(alpha * gate) * (up + 1)).to(act_dtype).float()
        w2 = mxfp4.dequantize(torch.from_numpy(experts.down_blocks[e]), torch.from_numpy(experts.down_scales[e]),
                              torch.float32)
        out += (w2 @ h + torch.from_numpy(experts.down_bias[e])) * w
    return out.numpy()


def warm_up(use_numba: bool | None = None) -> float:
    """Compile (or load from numba's on-disk cache) the kernels at a tiny shape; returns the seconds it took.
    The kernels are specialised on dtypes and ranks only, so this covers every model shape."""
    t0 = time.perf_counter()
    experts, x = random_experts(64, 64, 2, seed=0)
    expert_mix(x, experts, [0, 1], [0.5, 0.5], threads=1, use_numba=use_numba)
    return time.perf_counter() - t0


def random_experts(hidden: int, intermediate: int, num_experts: int,
                   seed: int = 0) -> tuple[HostExperts, np.ndarray]:
    """Random packed experts at a given shape (every byte value, scales around 2**-6) and an activation x."""
    rng = np.random.default_rng(seed)
    g1, g2 = hidden // 32, intermediate // 32
    experts = HostExperts(
        gate_up_blocks=rng.integers(0, 256, (num_experts, 2 * intermediate, g1, 16), dtype=np.uint8),
        gate_up_scales=rng.integers(118, 124, (num_experts, 2 * intermediate, g1), dtype=np.uint8),
        gate_up_bias=rng.standard_normal((num_experts, 2 * intermediate)).astype(np.float32),
        down_blocks=rng.integers(0, 256, (num_experts, hidden, g2, 16), dtype=np.uint8),
        down_scales=rng.integers(118, 124, (num_experts, hidden, g2), dtype=np.uint8),
        down_bias=rng.standard_normal((num_experts, hidden)).astype(np.float32),
    )
    return experts, rng.standard_normal(hidden).astype(np.float32)


@dataclass
class CpuExpertRate:
    """What one call costs on this machine: ``seconds = call_s + experts * expert_bytes / bytes_s``."""

    bytes_s: float  # packed expert bytes per second
    call_s: float  # fixed cost of a call (thread start-up, the small copies around the kernels)
    threads: int
    numba: bool


def measure_cpu_rate(hidden: int = 2880, intermediate: int = 2880, threads: int | None = None,
                     use_numba: bool | None = None, repeats: int = 3,
                     experts: HostExperts | None = None) -> CpuExpertRate:
    """Time ``expert_mix`` for one and for two experts after a warm-up: the difference is the per-expert cost,
    the rest the per-call cost. Every call reads experts no earlier call touched (as offloaded experts come from
    RAM, not from the cache): ``experts`` (a real layer's, no allocation), else copies of a random one at the
    given shape (default gpt-oss's)."""
    use_numba = kernels() is not None if use_numba is None else use_numba
    threads = threads or default_threads()
    if experts is None:
        one, x = random_experts(hidden, intermediate, 1, seed=1)
        n = 3 * repeats + 1

        def tiled(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.broadcast_to(a, (n, *a.shape[1:])))

        experts = HostExperts(*(tiled(getattr(one, f)) for f in (
            "gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales", "down_bias")))
    else:
        x = np.random.default_rng(1).standard_normal(experts.down_blocks.shape[1]).astype(np.float32)
    count = experts.gate_up_blocks.shape[0]
    order = iter(range(10**9))

    def timed(k: int) -> float:
        ids = [next(order) % count for _ in range(k)]
        t0 = time.perf_counter()
        expert_mix(x, experts, ids, [0.5] * k, threads=threads, use_numba=use_numba)
        return time.perf_counter() - t0

    timed(1)  # compile or load the kernels, start the threads
    ones, twos = [], []
    for _ in range(repeats):
        ones.append(timed(1))
        twos.append(timed(2))
    t1, t2 = statistics.median(ones), statistics.median(twos)
    per_expert = t2 - t1
    if per_expert < t2 / 4:  # noise (another process, a frequency step): no call cost then, just the average
        per_expert = t2 / 2
    return CpuExpertRate(bytes_s=experts.expert_bytes / per_expert, call_s=max(t1 - per_expert, 0.0),
                         threads=threads, numba=use_numba)
