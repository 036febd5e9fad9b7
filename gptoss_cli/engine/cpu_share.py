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

The split is chosen at load (``calibrated``): a first team is timed on the model's own experts, the calling thread
standing in for the GPU, and the split moves to where that rate and the GPU's in-place PCIe rate finish together
(H200 host: ~40–45 GB/s for the team of 14 threads against ~47 GB/s in place, so about half of each expert each).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import cpu_experts

if TYPE_CHECKING:  # the kernels need Triton; the engine loads without it (then no share starts)
    from gptoss_kernels.moe import HostExchange

# empty scans of the flags (each ~50-100 ns with its pause, for 24 layers: ~0.1-0.2 s in all) before a worker sleeps
HOT_SCANS = 2_000_000
# short sleeps (~0.2 ms on Linux, 1 ms on Windows) before the sleeps grow tenfold: ~1 s of idling on Linux
LIGHT_SLEEPS = 5_000
# below this share of each expert a team of spinning threads is not worth its cores
MIN_FRACTION = 0.05


def team_size() -> int:
    """Worker threads: every core but two, one for the thread driving the GPU and one for everything else on the
    machine. The team meets at spin barriers, so a worker that loses its core to another process stalls all of
    them (a precaution: runs on the H200 host with every core busy were erratic, with a hand-off race since
    fixed; with two cores free three machine starts in a row measured steady)."""
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
    bytes_s: float | None = None  # the team's measured rate in packed expert bytes per second (``calibrated``)
    num_experts: int = 0  # experts per layer (time_requests routes among them)

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
                    threads=threads or team_size(), bf16=act_dtype == torch.bfloat16,
                    num_experts=first.gate_up_blocks.shape[0])
        ex = share.exchange
        fields = ("gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales")
        per_layer = [List([getattr(host[i], name) for i in layers]) for name in fields]
        h = np.zeros((top_k, 2, (intermediate - split) // 2), dtype=np.float32)
        counters = np.zeros(2, dtype=np.int64)
        share._args = (ex.flags.numpy(), ex.dones.numpy(), share._stop, counters, ex.ids.numpy(), ex.wts.numpy(),
                       ex.xs.numpy(), ex.outs.numpy(), *per_layer, np.int64(split), np.float32(alpha),
                       np.float32(limit), share.bf16, h, np.int64(HOT_SCANS), np.int64(LIGHT_SLEEPS))
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

    def time_requests(self, rounds: int = 2, seed: int = 0, timeout_s: float = 10.0) -> float:
        """Median seconds the team takes for one request, the calling thread standing in for the GPU: every slot in
        turn, ``rounds`` times, gets random routing and input and is waited for. Called before the first decode
        step; afterwards the GPU's request counts continue from the ones used here."""
        ex = self.exchange
        flags, dones, ids, wts, xs = (t.numpy() for t in (ex.flags, ex.dones, ex.ids, ex.wts, ex.xs))
        experts = self.num_experts
        rng = np.random.default_rng(seed)
        times = []
        for _ in range(rounds):
            for slot in range(len(self.layers)):
                ids[slot] = np.sort(rng.choice(experts, ids.shape[1], replace=False))[::-1]
                wts[slot] = 1.0 / ids.shape[1]
                xs[slot] = rng.standard_normal(xs.shape[1], dtype=np.float32)
                seq = int(flags[slot]) + 1
                t0 = time.perf_counter()
                flags[slot] = seq  # after the inputs: x86 keeps stores in order, and the workers load with acquire
                while dones[slot] != seq:
                    if time.perf_counter() - t0 > timeout_s or not self.alive:
                        raise RuntimeError(f"the CPU share did not answer a request ({self.error or 'timed out'})")
                times.append(time.perf_counter() - t0)
        ex.seq.copy_(ex.flags)
        return float(np.median(times))

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


def calibrated(start: Callable[[int], CpuShare], intermediate: int, layer_bytes: int, gpu_bytes_s: float,
               first_fraction: float = 0.3, starts: int = 3) -> CpuShare | None:
    """A running share whose split lets the GPU (reading its columns in place at ``gpu_bytes_s``) and the team
    finish together, or None where the CPU's part would be under MIN_FRACTION. ``start(split)`` starts a team; the
    first starts at ``first_fraction`` and is timed (``time_requests``); the balance of the two rates gives the
    CPU ``f = cpu / (cpu + gpu)`` of each expert, and a team more than 2.5 % of the columns off that split (two
    groups of gpt-oss's) is closed and a new one started there and timed (at most ``starts`` teams).
    ``layer_bytes``: the packed bytes of a layer's routed experts."""
    split = split_for(first_fraction, intermediate)
    share, teams = start(split), 1
    while True:
        try:
            seconds = share.time_requests()
        except BaseException:
            share.close()
            raise
        share.bytes_s = layer_bytes * (intermediate - split) / intermediate / seconds
        fraction = share.bytes_s / (share.bytes_s + gpu_bytes_s)
        best = split_for(fraction, intermediate) if fraction >= MIN_FRACTION else intermediate
        if best < intermediate and (abs(best - split) <= 0.025 * intermediate or teams == starts):
            return share
        share.close()
        if best >= intermediate:
            return None
        split = best
        share, teams = start(split), teams + 1
