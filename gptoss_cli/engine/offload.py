"""Experts kept off the GPU: pinned host RAM, MXFP4-packed, served through a GPU expert cache.

Only k of E experts run per token and layer, so a layer whose experts live in RAM needs k experts' bytes on the GPU
for a decode step (4 x 13.2 MB for gpt-oss), not all of them. Each call routes on the GPU, reads the chosen ids
(one small host synchronisation per offloaded layer), and assembles those experts in a staging buffer indexed by
expert id: from the cache's GPU slots when they are there (a device copy), else from pinned RAM over PCIe (then
kept in the cache, least recently used out). The regular Triton MoE kernels then run on the staging buffer, so
offloaded layers compute exactly what resident ones do. Prefill chunks route many tokens at once and stream each
needed expert to the GPU once per chunk.

Not done here (see the issue note): computing misses on the CPU, and prefetching the next layer's experts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..model.config import GptOssConfig
from ..model.transformer import GptOss, Layer, Ops


@dataclass
class OffloadStats:
    hits: int = 0
    misses: int = 0
    bytes_from_host: int = 0
    calls: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ExpertOffload:
    """The host copies of offloaded layers' experts, a GPU staging buffer and an LRU cache of GPU slots."""

    def __init__(self, model: GptOss, cache_slots: int, layers: list[int] | None = None) -> None:
        """``layers`` defaults to those whose experts are not on the compute device (as the plan placed them)."""
        self.model, cfg, dev = model, model.cfg, model.device
        self.layers = layers if layers is not None else [
            i for i, layer in enumerate(model.layers) if layer.gate_up_blocks.device != dev]
        pin = torch.cuda.is_available()
        for i in self.layers:
            layer = model.layers[i]
            for name in ("gate_up_blocks", "gate_up_scales", "down_blocks", "down_scales"):
                host = getattr(layer, name).cpu()
                setattr(layer, name, host.pin_memory() if pin else host)
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

    @property
    def gpu_bytes(self) -> int:
        return sum(t.nbytes for t in self.staging.values()) + sum(t.nbytes for t in self.slots.values())

    def _stage(self, index: int, layer: Layer, experts: list[int]) -> None:
        """Put ``experts`` of layer ``index`` into the staging buffer at their own ids."""
        for e in experts:
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

    def moe(self, x: torch.Tensor, layer: Layer, cfg: GptOssConfig, index: int, inner: Ops) -> torch.Tensor:
        logits = F.linear(x, layer.router_w, layer.router_b)
        experts = torch.topk(logits, cfg.num_experts_per_tok, dim=-1).indices.unique().tolist()
        self.stats.calls += 1
        self._stage(index, layer, experts)
        staged = replace(layer, gate_up_blocks=self.staging["gate_up_blocks"],
                         gate_up_scales=self.staging["gate_up_scales"], down_blocks=self.staging["down_blocks"],
                         down_scales=self.staging["down_scales"])
        return inner.moe(x, staged, cfg)


def with_offload(model: GptOss, cache_slots: int, layers: list[int] | None = None) -> ExpertOffload | None:
    """Route the model's offloaded layers through an ExpertOffload; None when every expert is on the compute
    device (``layers`` forces a placement, as the tests do on the CPU)."""
    if layers is None and all(layer.gate_up_blocks.device == model.device for layer in model.layers):
        return None
    offload = ExpertOffload(model, cache_slots, layers)
    inner = model.ops
    index_of = {id(layer): i for i, layer in enumerate(model.layers)}
    offloaded = set(offload.layers)

    def moe(x: torch.Tensor, layer: Layer, cfg: GptOssConfig) -> torch.Tensor:
        i = index_of.get(id(layer), -1)
        if i in offloaded:
            return offload.moe(x, layer, cfg, i, inner)
        return inner.moe(x, layer, cfg)

    model.ops = replace(inner, name=inner.name + " + expert offload", moe=moe, graph_safe=False)
    return offload
