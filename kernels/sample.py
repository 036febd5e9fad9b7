"""The end of a CUDA-graph decode step: pick the next id (greedy: the argmax of the logits), hand it to the next step
and to the host, and advance the position. The torch reference and a Triton kernel.

Inside the graph the next id must land in three places: the graph's input id (the next step embeds it), a pinned
host buffer (the engine streams it), and the step's position must move on by one. torch did this with an argmax (a
generic reduction), a device-to-host copy and a fill between graphs: three stream operations and two launch gaps a
token. ``Publisher`` does it in one launch: each program reduces a slice of the logits to one 64-bit key, the
value's bits mapped to an order-preserving integer above the complemented index (so the larger value wins, then the
lower index, as ``torch.argmax``; a NaN is not ranked as torch ranks it), merged with an atomic max; the last program
to finish writes the id to ``token`` and to ``host[(pos + 1) % len(host)]`` (pinned memory the GPU writes in place,
read by the host after the step's event) and stores ``pos + 1``. Without logits (a sampled id already in ``token``)
one program publishes it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .interpret import interpreting

BLOCK = 2048  # logits a program (99 programs for the 201,088-token vocabulary); decode_loop_time.py sweeps it
_KEY_FLOOR = tl.constexpr(-(2**63) + 1)  # the merge's start: below every key (-inf's is about -2**63 + 2**55)


def publish_reference(logits: torch.Tensor | None, token: torch.Tensor, host: torch.Tensor, pos: torch.Tensor) -> None:
    """logits [V] (or None: ``token`` already holds the id) -> token [1] = argmax; host[(pos + 1) % n] = token;
    pos += 1. Tensors on one device (host on the CPU when they are on the CPU)."""
    if logits is not None:
        torch.argmax(logits, dim=-1, keepdim=True, out=token)
    host.index_copy_(0, ((pos + 1) % host.numel()).to(host.device), token.to(host.device))
    pos.add_(1)


@triton.jit
def _finish(token, token_ptr, host_ptr, pos_ptr, HOST_SLOTS: tl.constexpr):
    pos = tl.load(pos_ptr)
    tl.store(token_ptr, token)
    tl.store(host_ptr + (pos + 1) % HOST_SLOTS, token)
    tl.store(pos_ptr, pos + 1)


@triton.jit
def _argmax_publish_kernel(logits_ptr, N, best_ptr, count_ptr, token_ptr, host_ptr, pos_ptr,
                           HOST_SLOTS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(logits_ptr + offs, mask=offs < N, other=float("-inf")) + 0.0  # -0.0 becomes +0.0, as torch ties
    bits = v.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed integer order = float order
    key = (ordered.to(tl.int64) << 32) | (4294967295 - offs.to(tl.int64))  # ties: the lower index is the larger key
    # relaxed: the add below releases it (same thread, program order), and the last program's add acquires them all
    tl.atomic_max(best_ptr, tl.max(key, axis=0), sem="relaxed", scope="gpu")
    done = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
    if done == tl.num_programs(0) - 1:
        best = tl.atomic_xchg(best_ptr, _KEY_FLOOR, sem="acq_rel", scope="gpu")  # read, and reset for the next step
        tl.store(count_ptr, 0)
        _finish(4294967295 - (best & 4294967295), token_ptr, host_ptr, pos_ptr, HOST_SLOTS)


@triton.jit
def _publish_kernel(token_ptr, host_ptr, pos_ptr, HOST_SLOTS: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)
    _finish(tl.load(token_ptr), token_ptr, host_ptr, pos_ptr, HOST_SLOTS)


class Publisher:
    """The scratch the argmax merges into (one key, one counter), kept between launches (a graph replays them):
    the last program resets both."""

    def __init__(self, device: torch.device) -> None:
        self.best = torch.full((1,), _KEY_FLOOR.value, dtype=torch.int64, device=device)
        self.count = torch.zeros(1, dtype=torch.int32, device=device)

    def __call__(self, logits: torch.Tensor | None, token: torch.Tensor, host: torch.Tensor, pos: torch.Tensor) -> None:
        """The Triton version of :func:`publish_reference`; ``host`` is pinned memory when the rest is on a GPU."""
        if not (token.is_cuda or interpreting()):
            raise ValueError("the Triton publish needs CUDA tensors (or TRITON_INTERPRET=1); use the reference")
        if token.shape != (1,) or pos.shape != (1,) or token.dtype != torch.long or host.dtype != torch.long:
            raise ValueError("publish wants token and pos as long [1] and host ids as long [n]")
        if token.is_cuda and not host.is_pinned():
            raise ValueError("the host ids must be pinned memory for the GPU to write them in place")
        if logits is None:
            _publish_kernel[(1,)](token, host, pos, HOST_SLOTS=host.numel(), num_warps=1, **pdl.launch(token))
            return
        if logits.dim() != 1 or logits.stride(0) != 1:
            raise ValueError(f"publish wants contiguous logits [V], got {tuple(logits.shape)}")
        N = logits.shape[0]
        _argmax_publish_kernel[(triton.cdiv(N, BLOCK),)](logits, N, self.best, self.count, token, host, pos,
                                                        HOST_SLOTS=host.numel(), BLOCK=BLOCK, num_warps=4,
                                                        **pdl.launch(logits))
