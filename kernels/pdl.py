"""Programmatic dependent launch for the decode kernels (Hopper and newer GPUs; a no-op elsewhere).

A decode token is ~200 small launches, and each one's grid used to start only after the previous grid had fully
drained: ~0.8 us of idle GPU per launch (174 us of a 1.83 ms token on an H200, benchmarks/profile_decode.py).
Launched with ``launch_pdl``, a kernel's programs are scheduled while its predecessor finishes; each program then
waits (``griddepcontrol.wait``) until every prerequisite grid has completed and its writes are visible, before it
reads or writes anything a predecessor touches, and signals its own dependents right away, so the chain keeps
overlapping. A kernel that loads weights first must signal first (``signal``, the load, then ``wait_only``): the
dense GEMVs (bf16 and int8) and the router kernel do, and their weight latency hides behind the previous kernel's
tail. A load issued before a plain ``wait`` cost more than it saved (the bf16 decode step went 1702 -> 1828 us on an
H200, as if the wait held the dependents' signal until that load returned), and the RoPE kernel measured slower
signalling first, so the others wait first. CUDA graphs keep these launches as programmatic
edges. benchmarks/profile_decode.py checks on the GPU that decode logits with PDL on and off are bit-identical.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .interpret import interpreting

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without grid dependency control: kernels launch as before
    gdc_launch_dependents = gdc_wait = None


@functools.cache
def _capable(device_index: int) -> bool:
    return gdc_wait is not None and torch.cuda.get_device_capability(device_index)[0] >= 9


def enabled(t: torch.Tensor) -> bool:
    """Whether kernels working on ``t`` launch with PDL: CUDA, compute capability 9.0+, not the CPU interpreter."""
    return t.is_cuda and not interpreting() and _capable(t.device.index or 0)


def launch(t: torch.Tensor) -> dict:
    """Keyword arguments for a kernel launch: the PDL constexpr and, where enabled, the launch option."""
    on = enabled(t)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def signal(PDL: tl.constexpr):
    """Let the next kernel's programs be scheduled now (they still wait for this grid to finish before reading)."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def wait_only(PDL: tl.constexpr):
    """Wait for the predecessors' writes; for kernels that signalled first and prefetch weights in between."""
    if PDL:
        gdc_wait()


@triton.jit
def wait(PDL: tl.constexpr):
    """First statement of a decode kernel: wait for the predecessors, then let the next kernel's programs be
    scheduled."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
