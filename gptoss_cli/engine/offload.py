"""Experts kept off the GPU: pinned host RAM, MXFP4-packed, served through a GPU expert cache and the CPU.

Only k of E experts run per token and layer, so a layer whose experts live in RAM needs k experts' bytes on the GPU
for a decode step (4 x 13.2 MB for gpt-oss), not all of them.

Decode on the Triton path reads them in place: pinned RAM has a device address (unified addressing), so the decode
MoE kernels read the k routed experts' MXFP4 bytes straight over PCIe ("zero-copy"), with no staging copy and no
host synchronisation, and the whole decode step, offloaded layers included, stays inside one CUDA graph.

Prefill chunks (and the torch reference path) route on the GPU, read the chosen ids (one small host
synchronisation per offloaded layer), and assemble those experts in a staging buffer indexed by expert id: from
the cache's GPU slots when they are there (a device copy), else from pinned RAM over PCIe (then kept in the cache,
least recently used out). The regular MoE kernels then run on the staging buffer, so offloaded layers compute
exactly what resident ones do; a chunk streams each needed expert to the GPU once.

The CPU works on the experts where their bytes already are (engine/cpu_share.py). With in-place decode, by default,
it stays inside the CUDA graph: the GPU computes each routed expert's intermediate columns [0, split) over PCIe while
a team of CPU threads computes [split, I), handed over through pinned flags; the split is where the team's rate,
timed at load on the model's own experts, and the GPU's in-place PCIe rate finish together (H200 host: 55.4 vs
35.1 tok/s for 20b at 4 GiB, 87.5 vs 59.5 at 8 GiB, 53.5 for 120b at 24 GiB; BENCHMARKS.md).
``GPTOSS_CPU_EXPERTS=0`` turns it off, a fraction in [0, 1] forces one. Without in-place decode (the torch
reference path) a one-token call can instead stage the misses the GPU takes while a worker thread computes the
others with engine/cpu_experts.py and the main thread waits for it every layer (no CUDA graphs then; measured
slower than copying, so only with ``GPTOSS_CPU_EXPERTS`` set); a CPU-computed expert is staged as zeros with zero
biases, so it adds exactly 0 on the GPU.

Not done here: the in-place decode does not consult the GPU cache (it serves prefill), so every routed expert of an
offloaded layer crosses PCIe each token (a model whose routing repeats would gain from a cache there).
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from gptoss_kernels import mxfp4

from .. import speeds
from ..errors import GptossError
from ..model import transformer
from ..model.config import GptOssConfig
from ..model.transformer import GptOss, Layer, Ops
from ..plan import IN_PLACE_FRACTION
from ..settings import CPU_EXPERTS_ENV, cpu_experts_setting
from . import cpu_experts
from .cpu_share import MIN_FRACTION, CpuShare, calibrated, split_for


@dataclass
class OffloadStats:
    hits: int = 0  # routed experts found in the GPU cache
    misses: int = 0  # routed experts not in the cache: copied over PCIe or computed on the CPU
    bytes_from_host: int = 0  # bytes copied over PCIe (misses not computed on the CPU)
    calls: int = 0
    cpu_experts: int = 0  # misses computed on the CPU (one-token decode calls only)
    cpu_seconds: float = 0.0  # time the CPU expert work took (it overlaps the PCIe copies and GPU kernels)
    cpu_wait_seconds: float = 0.0  # time the main thread then still waited for it (the CPU was the slower side)
    cpu_bytes: int = 0  # packed expert bytes the CPU read (its share of in-place decode steps)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def expert_bytes_at(hidden: int, intermediate: int) -> int:
    """Packed bytes of one expert (gate_up and down blocks plus scales): 4.25 bits per weight."""
    return (2 * intermediate * hidden + hidden * intermediate) * 17 // 32


@dataclass
class OffloadCosts:
    """What moving or computing a missed expert costs on this machine (measured by ``measure_costs``)."""

    pcie_bytes_s: float  # pinned host -> GPU copy rate
    cpu_bytes_s: float  # packed expert bytes the CPU kernel gets through per second
    cpu_call_s: float = 0.0  # fixed cost of one CPU call (thread hand-off, small copies)
    cpu_threads: int = 1
    numba: bool = True

    @property
    def cpu_fraction(self) -> float:
        """The share f of misses that balances f * bytes / cpu = (1 - f) * bytes / pcie, call cost ignored."""
        total = self.cpu_bytes_s + self.pcie_bytes_s
        return self.cpu_bytes_s / total if total > 0 else 0.0

    def cpu_share(self, misses: int, expert_bytes: int) -> int:
        """How many of ``misses`` experts the CPU computes: the count whose later finish (CPU or PCIe) is
        earliest, fewer on the CPU on a tie."""
        if misses <= 0 or self.cpu_bytes_s <= 0:
            return 0

        def finish(n: int) -> float:
            cpu = self.cpu_call_s + n * expert_bytes / self.cpu_bytes_s if n else 0.0
            pcie = (misses - n) * expert_bytes / self.pcie_bytes_s if self.pcie_bytes_s > 0 else float("inf")
            return max(cpu, pcie)

        return min(range(misses + 1), key=lambda n: (finish(n), n))

    def to_dict(self) -> dict:
        return {"pcie_gb_s": self.pcie_bytes_s / 1e9, "cpu_gb_s": self.cpu_bytes_s / 1e9,
                "cpu_call_ms": self.cpu_call_s * 1e3, "cpu_threads": self.cpu_threads, "numba": self.numba,
                "cpu_fraction": self.cpu_fraction}


def measure_h2d(device: torch.device, nbytes: int = 64 << 20, repeats: int = 8) -> float:
    """Host RAM -> ``device`` copy rate in bytes/s (pinned source on CUDA; a plain host copy on the CPU)."""
    cuda = device.type == "cuda"
    src = torch.empty(nbytes, dtype=torch.uint8)
    if cuda:
        src = src.pin_memory()
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times[1:])


def remember_h2d(device: torch.device) -> None:
    """Measure the pinned host -> GPU rate once per machine (64 MB, milliseconds) and keep it for the planner's
    estimate (speeds.py); a later ``gptoss bench`` refreshes it. Best effort: skipped if the card has no room left
    for the probe's buffer or the host will not pin it."""
    name = torch.cuda.get_device_name(device)
    known = speeds.recall(name)
    if known is not None and known.h2d_gb_s is not None:
        return
    try:
        rate = measure_h2d(device)
    except (torch.cuda.OutOfMemoryError, RuntimeError):
        return
    speeds.remember(name, h2d_gb_s=rate / 1e9)


_MEASURED: dict[tuple, OffloadCosts] = {}


def measure_costs(device: torch.device | str, hidden: int = 2880, intermediate: int = 2880,
                  threads: int | None = None, use_numba: bool | None = None,
                  sample: cpu_experts.HostExperts | None = None) -> OffloadCosts:
    """Measure the PCIe copy rate and the CPU expert kernel's rate at an expert shape (once per process and
    arguments; the first call may JIT-compile the kernel, which numba then caches on disk). ``sample``: a real
    layer's host experts to time the CPU on (else random ones are made)."""
    device = torch.device(device)
    threads = threads or cpu_experts.default_threads()
    use_numba = cpu_experts.kernels() is not None if use_numba is None else use_numba
    key = (str(device), hidden, intermediate, threads, use_numba)
    if key not in _MEASURED:
        nbytes = max(4 * expert_bytes_at(hidden, intermediate), 16 << 20)
        pcie = measure_h2d(device, nbytes)
        cpu = cpu_experts.measure_cpu_rate(hidden, intermediate, threads=threads, use_numba=use_numba,
                                           experts=sample)
        _MEASURED[key] = OffloadCosts(pcie_bytes_s=pcie, cpu_bytes_s=cpu.bytes_s, cpu_call_s=cpu.call_s,
                                      cpu_threads=threads, numba=use_numba)
    return _MEASURED[key]


class ExpertOffload:
    """The host copies of offloaded layers' experts, a GPU staging buffer, an LRU cache of GPU slots and a CPU
    worker for decode misses."""

    def __init__(self, model: GptOss, cache_slots: int, layers: list[int] | None = None,
                 cpu_fraction: float | None = None, costs: OffloadCosts | None = None,
                 cpu_threads: int | None = None, concurrent: bool | None = None) -> None:
        """``layers`` defaults to those whose experts are not on the compute device (as the plan placed them).

        CPU experts: ``cpu_fraction`` forces the CPU's share (0: none, 1: all) of decode misses (staging path) or
        of each expert (in-place decode's in-graph share); else ``costs`` decides; with neither,
        ``GPTOSS_CPU_EXPERTS`` (unset: the in-graph share measures its split at start, the staging path computes
        nothing on the CPU; "auto": costs measured here on a CUDA device with numba installed). ``concurrent``: run
        the CPU experts on a worker thread while the device works (default: on CUDA; on a CPU device both sides
        would only compete for the same cores)."""
        self.model, cfg, dev = model, model.cfg, model.device
        self.layers = layers if layers is not None else [
            i for i, layer in enumerate(model.layers) if layer.gate_up_blocks.device != dev]
        pin = torch.cuda.is_available()
        self.host: dict[int, cpu_experts.HostExperts] = {}
        for i in self.layers:
            layer = model.layers[i]
            for name in ("gate_up_blocks", "gate_up_scales", "down_blocks", "down_scales"):
                host = getattr(layer, name).cpu()
                if host.dtype == torch.int32:  # re-laid for the GPU's decode (model/fast.py): back to the hub's
                    host = mxfp4.from_paired(host)
                setattr(layer, name, host.pin_memory() if pin else host)
            self.host[i] = cpu_experts.HostExperts.from_tensors(
                layer.gate_up_blocks, layer.gate_up_scales, layer.gate_up_bias, layer.down_blocks,
                layer.down_scales, layer.down_bias)
            layer.gate_up_bias = layer.gate_up_bias.to(dev)  # 0.5 MB a layer: not worth offloading
            layer.down_bias = layer.down_bias.to(dev)
        first = model.layers[self.layers[0]] if self.layers else None
        shapes = {name: tuple(getattr(first, name).shape[1:]) for name in
                  ("gate_up_blocks", "gate_up_scales", "down_blocks", "down_scales")} if first else {}
        E = cfg.num_local_experts
        self.staging = {name: torch.empty((E, *shape), dtype=torch.uint8, device=dev)
                        for name, shape in shapes.items()}
        self.slots = {name: torch.empty((cache_slots, *shape), dtype=torch.uint8, device=dev)
                      for name, shape in shapes.items()} if cache_slots else {}
        self.capacity = cache_slots
        self.expert_bytes = sum(t[0].nbytes for t in self.staging.values())
        self.lru: OrderedDict[tuple[int, int], int] = OrderedDict()  # (layer, expert) -> slot
        self.stats = OffloadStats()
        self.zeroed: set[int] = set()  # staging entries that hold an all-zero expert right now

        share_fraction = cpu_fraction
        if cpu_fraction is None and costs is None:
            share_fraction, chosen = cpu_experts_setting()
            cpu_fraction = share_fraction if chosen else 0.0
        if cpu_fraction is None and costs is None:
            if dev.type == "cuda" and self.layers and cpu_experts.kernels() is not None:
                costs = measure_costs(dev, cfg.hidden_size, cfg.intermediate_size, cpu_threads,
                                      sample=self.host[self.layers[0]])
            else:
                cpu_fraction = 0.0
        self.cpu_fraction = cpu_fraction  # the staging path's CPU share of misses; None: the cost model decides
        self.share_fraction = share_fraction  # in-place decode's in-graph share; None: measured at start_share
        self.costs = costs
        self.cpu_threads = cpu_threads or (costs.cpu_threads if costs else cpu_experts.default_threads())
        self.concurrent = dev.type == "cuda" if concurrent is None else concurrent
        self._pool: ThreadPoolExecutor | None = None
        # decode reads the routed experts straight from pinned RAM (the Triton kernels on a CUDA device; set by
        # with_offload, which knows the ops)
        self.in_place = False
        self._decode_max_tokens = 0
        self.share: CpuShare | None = None  # the CPU worker sharing in-place decode (with_offload starts it)
        self.notes: list[str] = []  # what the user should know (a CPU share that could not start)

    @property
    def gpu_bytes(self) -> int:
        return sum(t.nbytes for t in self.staging.values()) + sum(t.nbytes for t in self.slots.values())

    def cpu_share(self, misses: int) -> int:
        """How many of a decode call's ``misses`` the CPU computes."""
        if misses <= 0:
            return 0
        if self.cpu_fraction is not None:
            return min(misses, max(0, int(self.cpu_fraction * misses + 0.5)))
        return self.costs.cpu_share(misses, self.expert_bytes) if self.costs is not None else 0

    def _stage(self, index: int, layer: Layer, experts: list[int]) -> None:
        """Put ``experts`` of layer ``index`` into the staging buffer at their own ids."""
        for e in experts:
            self.zeroed.discard(e)
            slot = self.lru.get((index, e))
            if slot is not None:
                self.lru.move_to_end((index, e))
                self.stats.hits += 1
                for name, buf in self.staging.items():
                    buf[e].copy_(self.slots[name][slot])
                continue
            self.stats.misses += 1
            self.stats.bytes_from_host += self.expert_bytes
            for name, buf in self.staging.items():
                buf[e].copy_(getattr(layer, name)[e], non_blocking=True)
            slot = self._free_slot(index, experts)
            if slot is not None:
                self.lru[(index, e)] = slot
                for name, buf in self.slots.items():
                    buf[slot].copy_(self.staging[name][e])

    def _free_slot(self, index: int, keep: list[int]) -> int | None:
        """An empty slot, else the least recently used one not needed right now; None if all are needed."""
        if len(self.lru) < self.capacity:
            return len(self.lru)
        for key in self.lru:
            if key[0] != index or key[1] not in keep:
                return self.lru.pop(key)
        return None

    def _staged(self, layer: Layer) -> Layer:
        return replace(layer, gate_up_blocks=self.staging["gate_up_blocks"],
                       gate_up_scales=self.staging["gate_up_scales"], down_blocks=self.staging["down_blocks"],
                       down_scales=self.staging["down_scales"])

    @staticmethod
    def _router_logits(x: torch.Tensor, layer: Layer, inner: Ops) -> torch.Tensor:
        """Router logits as ``inner.moe`` computes them (the reference in the activation dtype, the Triton kernels
        in fp32), so the experts staged here and the routing weights used on the CPU are the kernels' own."""
        if inner.moe is transformer.moe:
            return F.linear(x, layer.router_w, layer.router_b)
        return F.linear(x.float(), layer.router_w.float(), layer.router_b.float())

    def count_in_place(self, tokens: int, layers: int | None = None) -> None:
        """Account decode tokens whose offloaded layers (all by default) read their routed experts in place
        (zero-copy): each of a layer's k experts crosses PCIe once per token. CUDA-graph steps are counted by the
        engine, since nothing here runs while a graph replays."""
        n = tokens * self.model.cfg.num_experts_per_tok * (len(self.layers) if layers is None else layers)
        self.stats.misses += n
        gpu = self.expert_bytes if self.share is None else self.expert_bytes * self.share.exchange.split // (
            self.model.cfg.intermediate_size)
        self.stats.bytes_from_host += n * gpu
        self.stats.cpu_bytes += n * (self.expert_bytes - gpu)

    def moe(self, x: torch.Tensor, layer: Layer, cfg: GptOssConfig, index: int, inner: Ops) -> torch.Tensor:
        self.stats.calls += 1
        if self.in_place and x.shape[0] <= self._decode_max_tokens:
            self.count_in_place(x.shape[0], layers=1)
            return inner.moe(x, layer, cfg)
        logits = self._router_logits(x, layer, inner)
        if x.shape[0] == 1 and (self.cpu_fraction is None or self.cpu_fraction > 0):
            return self._decode_split(x, logits, layer, cfg, index, inner)
        experts = torch.topk(logits, cfg.num_experts_per_tok, dim=-1).indices.unique().tolist()
        self._stage(index, layer, experts)
        return inner.moe(x, self._staged(layer), cfg)

    def _timed_mix(self, x: np.ndarray, experts: cpu_experts.HostExperts, ids: list[int], weights: list[float],
                   act_dtype: torch.dtype, alpha: float, limit: float) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        y = cpu_experts.expert_mix(x, experts, ids, weights, act_dtype, alpha, limit, self.cpu_threads)
        return y, time.perf_counter() - t0

    def _decode_split(self, x: torch.Tensor, logits: torch.Tensor, layer: Layer, cfg: GptOssConfig, index: int,
                      inner: Ops) -> torch.Tensor:
        """One token: hits from the cache, some misses over PCIe, the others on the CPU at the same time."""
        k = cfg.num_experts_per_tok
        top = torch.topk(logits[0], k, sorted=True)
        weights = torch.softmax(top.values.float(), dim=-1)
        # one device -> host transfer for the ids, their routing weights and the activation
        host = torch.cat((top.indices.float(), weights, x[0].float())).cpu()
        experts = [int(e) for e in host[:k].tolist()]
        misses = [e for e in experts if (index, e) not in self.lru]
        n_cpu = self.cpu_share(len(misses))
        if n_cpu == 0:
            self._stage(index, layer, experts)
            return inner.moe(x, self._staged(layer), cfg)
        # the lowest-weighted misses go to the CPU (topk is sorted), so the cache keeps the heavier ones
        on_cpu = misses[-n_cpu:]
        w_host = host[k:2 * k].numpy()
        cpu_weights = [float(w_host[experts.index(e)]) for e in on_cpu]
        args = (host[2 * k:].numpy(), self.host[index], on_cpu, cpu_weights, x.dtype, cfg.swiglu_alpha,
                cfg.swiglu_limit)
        job = None
        if self.concurrent:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-cpu-experts")
            job = self._pool.submit(self._timed_mix, *args)
        # a zero expert with zero biases adds exactly 0 in the GPU kernels (ids sent before the big copies queue)
        idx = torch.tensor(on_cpu, device=x.device)
        gate_up_bias, down_bias = layer.gate_up_bias.index_fill(0, idx, 0), layer.down_bias.index_fill(0, idx, 0)
        self._stage(index, layer, [e for e in experts if e not in on_cpu])
        for e in on_cpu:
            if e not in self.zeroed:
                for buf in self.staging.values():
                    buf[e].zero_()
                self.zeroed.add(e)
        out = inner.moe(x, replace(self._staged(layer), gate_up_bias=gate_up_bias, down_bias=down_bias), cfg)
        t0 = time.perf_counter()
        y, seconds = job.result() if job is not None else self._timed_mix(*args)
        self.stats.cpu_wait_seconds += time.perf_counter() - t0
        self.stats.cpu_seconds += seconds
        self.stats.misses += n_cpu
        self.stats.cpu_experts += n_cpu
        return (out.float() + torch.from_numpy(y).to(out.device)).to(x.dtype)

    def start_share(self) -> None:
        """Start the CPU team for in-place decode (engine/cpu_share.py): at the configured fraction, or (the default)
        at the split where the team's rate, timed here on this model's experts, and the GPU's in-place PCIe rate
        finish together. A note says why when none starts; decode then reads everything over PCIe."""
        cfg = self.model.cfg
        I = cfg.intermediate_size

        def start(split: int) -> CpuShare:
            return CpuShare.start(self.host, self.layers, split, cfg.num_experts_per_tok, self.model.dtype,
                                  self.model.device, cfg.swiglu_alpha, cfg.swiglu_limit)

        try:
            if self.share_fraction is not None:
                split = split_for(self.share_fraction, I)
                self.share = start(split) if split < I else None
            else:
                pcie = self.costs.pcie_bytes_s if self.costs else measure_h2d(self.model.device)
                self.share = calibrated(start, I, cfg.num_experts_per_tok * self.expert_bytes,
                                        pcie * IN_PLACE_FRACTION)
                if self.share is None:
                    self.notes.append("CPU expert share off: this CPU would take under "
                                      f"{MIN_FRACTION:.0%} of each expert")
            if self.share is not None and (why := self._share_disagrees()):
                self.share.close()
                self.share = None
                self.notes.append(f"CPU expert share off: {why}")
            if self.share is not None and self.share.bytes_s and self.model.device.type == "cuda":
                # the rate timed here, for the next plan's estimate (speeds.py)
                speeds.remember(torch.cuda.get_device_name(self.model.device), cpu_share_gb_s=self.share.bytes_s / 1e9)
        except Exception as exc:  # noqa: BLE001 - any failure leaves decode to the GPU alone, with a note
            self.notes.append(f"CPU expert share off: {exc}")
            if self.share is not None:
                self.share.close()
            self.share = None
        if self.share is not None:
            weakref.finalize(self, self.share.close)

    def _share_disagrees(self) -> str | None:
        """Why the running share cannot be trusted, or None: one random token through the first offloaded layer,
        the GPU alone against the GPU and the team, must give the same MoE output to rounding. Catches a platform
        where the GPU and the team do not see each other's writes to pinned memory (the GPU would wait ~1 s a
        layer and give NaN) before any token is decoded."""
        from gptoss_kernels import moe as moe_kernels

        cfg, dev, dtype = self.model.cfg, self.model.device, self.model.dtype
        layer = self.model.layers[self.layers[0]]
        gen = torch.Generator().manual_seed(0)
        x, res = (torch.randn(1, cfg.hidden_size, generator=gen).to(dev, dtype) for _ in range(2))
        residual = (res, torch.ones(cfg.hidden_size, device=dev, dtype=dtype), 1e-5)
        experts = (layer.gate_up_blocks, layer.gate_up_scales, layer.gate_up_bias, layer.down_blocks,
                   layer.down_scales, layer.down_bias, cfg.num_experts_per_tok, cfg.swiglu_alpha, cfg.swiglu_limit,
                   residual)
        routing = moe_kernels.router_logits(x, layer.router_w, layer.router_b)
        want = moe_kernels.experts_decode(x, routing, *experts)[0].float() - res.float()
        got = moe_kernels.experts_decode_shared(x, routing, *experts, *self.share.slots()[self.layers[0]])[0]
        got = got.float() - res.float()
        err = ((got - want).norm() / want.norm().clamp_min(1e-6)).item()
        if not math.isfinite(err):
            return "the GPU got no answer from the CPU team (pinned-memory flags not seen)"
        if err > 0.05:
            return f"the CPU team's part disagrees with the GPU's (relative error {err:.2g})"
        return None

    def check_share(self) -> None:
        """Refuse to decode on a CPU share whose workers are gone: the GPU would wait ~1 s a layer, then compute NaN."""
        if self.share is not None and not self.share.alive:
            raise GptossError(f"the CPU expert share stopped ({self.share.error or 'its workers were closed'})",
                              hint=f"set {CPU_EXPERTS_ENV}=0 to decode with the GPU alone")

    def close(self) -> None:
        """Stop the CPU worker, if any (after the last decode step has finished)."""
        if self.share is not None:
            self.share.close()


def with_offload(model: GptOss, cache_slots: int, layers: list[int] | None = None,
                 cpu_fraction: float | None = None, costs: OffloadCosts | None = None,
                 concurrent: bool | None = None) -> ExpertOffload | None:
    """Route the model's offloaded layers through an ExpertOffload; None when every expert is on the compute
    device (``layers`` forces a placement, as the tests do on the CPU). ``cpu_fraction``, ``costs``,
    ``concurrent``: see ExpertOffload."""
    if layers is None and all(layer.gate_up_blocks.device == model.device for layer in model.layers):
        return None
    offload = ExpertOffload(model, cache_slots, layers, cpu_fraction=cpu_fraction, costs=costs,
                            concurrent=concurrent)
    inner = model.ops
    offload.in_place = (model.device.type == "cuda" and inner.decode_step is not None
                        and all(model.layers[i].gate_up_blocks.is_pinned() for i in offload.layers))
    if offload.in_place:
        from gptoss_kernels.moe import DECODE_MAX_TOKENS

        offload._decode_max_tokens = DECODE_MAX_TOKENS
    index_of = {id(layer): i for i, layer in enumerate(model.layers)}
    offloaded = set(offload.layers)

    def moe(x: torch.Tensor, layer: Layer, cfg: GptOssConfig) -> torch.Tensor:
        i = index_of.get(id(layer), -1)
        if i in offloaded:
            return offload.moe(x, layer, cfg, i, inner)
        return inner.moe(x, layer, cfg)

    if offload.in_place and offload.share_fraction != 0:
        offload.start_share()
    # decode stays graph-capturable when it reads experts in place (a CPU share, if any, is the in-graph one)
    graph_safe = inner.graph_safe and offload.in_place
    decode_step = inner.decode_step
    if offload.share is not None:
        decode_step = partial(decode_step, cpu_share=offload.share.slots())
    model.ops = replace(inner, name=inner.name + " + expert offload", moe=moe, graph_safe=graph_safe,
                        decode_step=decode_step)
    return offload
