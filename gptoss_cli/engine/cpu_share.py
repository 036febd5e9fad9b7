"""A CPU worker that computes a share of every offloaded layer's decode MoE inside the CUDA graph (issue 9).

Experts the plan keeps in RAM cross PCIe when the GPU reads them in place (engine/offload.py), and PCIe, not the
GPU, then sets the decode speed: ~50 GB/s on a PCIe 5.0 x16 host, ~25 on PCIe 4.0. The CPU reads the same bytes
from RAM at its own speed, so for each routed expert the GPU computes the intermediate columns [0, split) and this
worker the columns [split, I) (the down projection sums over those columns, so the halves add up). Both sides read
the experts where they are, at the same time, and neither reads the other's bytes.

The hand-off stays inside the decode graph, with no host synchronisation (kernels/moe.py, experts_decode_shared):
per layer the GPU writes the token's routing and MoE input into pinned buffers and bumps the layer's flag; the
workers, spinning on the flags in numba loops that never take the GIL (``serve_part``), compute their share into a
pinned output and bump the layer's done mark; the GPU, after its own share, waits for that mark and ends the layer.
Workers that stop answering turn the output into NaN after about a second (never a hang, never a silent error), and
the engine refuses the next step (ExpertOffload.check_share).

The work is split over a team of threads (``team_size``), each in its own numba loop:
they split every request statically and meet at spin barriers, because waking a threading layer's sleeping threads
through the OS for each request cost more than the request (measured on the H200 host: 2.5x the isolated time).
The team polls without pause while decode runs and sleeps between polls once idle, so an idle chat costs no core.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import cpu_experts

if TYPE_CHECKING:  # the kernels need Triton; the engine loads without it (then no share starts)
    from gptoss_kernels.moe import HostExchange

# empty scans of the flags (tens of ns each for 24 layers: ~50 ms in all) before a worker sleeps between scans
HOT_SCANS = 2_000_000


def team_size() -> int:
    """Worker threads: every core but two, one for the thread driving the GPU and one for everything else on the
    machine. The team meets at spin barriers, so a worker that loses its core to another process stalls all of
    them (a precaution: runs on the H200 host with every core busy were erratic, with a hand-off race since fixed)."""
    return max(1, cpu_experts.default_threads() - 1)


def split_for(fraction: float, intermediate: int) -> int:
    """The first intermediate column the CPU computes for a CPU share ``fraction`` of each expert's bytes: a
    multiple of 32 (one scale group), leaving both sides at least one group; ``intermediate`` means no share."""
    groups = intermediate // 32
    cpu_groups = round(fraction * groups)
    if cpu_groups <= 0:
        return intermediate
    return 32 * (groups - min(cpu_groups, groups - 1))


@dataclass
class CpuShare:
    """The exchange buffers of the offloaded ``layers`` (one slot each) and the team of worker threads serving them."""

    layers: list[int]
    exchange: HostExchange
    threads: int
    bf16: bool
    _args: tuple = ()
    _stop: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int32))
    _team: list[threading.Thread] = field(default_factory=list)
    error: str | None = None  # why a worker stopped, if one failed

    @classmethod
    def start(cls, host: dict[int, cpu_experts.HostExperts], layers: list[int], split: int, top_k: int,
              act_dtype: torch.dtype, device: torch.device, alpha: float, limit: float,
              threads: int | None = None) -> CpuShare:
        """Allocate the exchange for ``layers`` (their experts in ``host``) and start ``threads`` workers (default:
        ``team_size()``)."""
        kernels = cpu_experts.kernels()
        if kernels is None:
            raise RuntimeError(f"a CPU share needs numba: {cpu_experts.numba_error or 'not installed'}")
        if act_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"a CPU share takes bf16 or fp32 activations, not {act_dtype}")
        from gptoss_kernels.moe import HostExchange
        from numba.typed import List

        first = host[layers[0]]
        hidden, intermediate = first.down_blocks.shape[1], first.down_blocks.shape[2] * 32
        if not 0 < split < intermediate or split % 32:
            raise ValueError(f"split {split} must be a multiple of 32 inside (0, {intermediate})")
        share = cls(layers=list(layers), exchange=HostExchange.allocate(len(layers), top_k, hidden, split, device),
                    threads=threads or team_size(), bf16=act_dtype == torch.bfloat16)
        ex = share.exchange
        fields = ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales")
        per_layer = [List([getattr(host[i], name) for i in layers]) for name in fields]
        h = np.zeros((top_k, 2, (intermediate - split) // 2), dtype=np.float32)
        counters = np.zeros(2, dtype=np.int64)
        share._args = (ex.flags.numpy(), ex.dones.numpy(), share._stop, counters, ex.ids.numpy(), ex.wts.numpy(),
                       ex.xs.numpy(), ex.outs.numpy(), *per_layer, np.int64(split), np.float32(alpha),
                       np.float32(limit), share.bf16, h, np.int64(HOT_SCANS))
        stopped = np.ones(1, dtype=np.int32)
        kernels.serve_part(0, 1, *share._args[:2], stopped, *share._args[3:])  # compile or load, now
        for k in range(share.threads):
            thread = threading.Thread(target=share._run, args=(kernels, k), name=f"gptoss-cpu-share-{k}",
                                      daemon=True)
            thread.start()
            share._team.append(thread)
        return share

    def _run(self, kernels, k: int) -> None:
        try:
            kernels.serve_part(k, self.threads, *self._args)
        except BaseException as exc:  # noqa: BLE001 - reported through .error and the GPU's NaN, not a dead thread
            self.error = f"{type(exc).__name__}: {exc}"

    def slots(self) -> dict[int, tuple[HostExchange, int]]:
        """Layer index -> (exchange, slot), as decode_step takes them."""
        return {layer: (self.exchange, slot) for slot, layer in enumerate(self.layers)}

    def state(self) -> dict:
        """Where the hand-off stands (host-side buffers only: safe to read while the GPU is busy)."""
        return {"alive": self.alive, "error": self.error, "flags": self.exchange.flags.tolist(),
                "dones": self.exchange.dones.tolist(), "split": self.exchange.split, "threads": self.threads}

    @property
    def alive(self) -> bool:
        return bool(self._team) and all(t.is_alive() for t in self._team)

    def close(self) -> None:
        """Stop the workers (after the GPU's last request: callers synchronise first) and wait for them."""
        self._stop[0] = 1
        for thread in self._team:
            thread.join()
        self._team.clear()
