"""Decode captured in CUDA graphs: one graph per KV-length bucket, replayed each token.

A decode step is ~400 small kernels at batch 1; launching them one by one costs more than the bytes they move.
A graph replays them with the launch gaps closed. Full-attention layers read the cache up to a bucket (a power of
two up to 4k, then multiples of 4k) so one graph serves many lengths while reading at most one bucket step of
empty slots (masked by their position -1). Graphs are captured lazily, the first time a bucket is reached.
"""

from __future__ import annotations

from functools import partial

import torch

from ..model.cache import KVCache
from ..model.transformer import GptOss, Int8Weight

_SMALL_BUCKETS = (256, 512, 1024, 2048, 4096)
_BUCKET_STEP = 4096


def kv_bucket(length: int, capacity: int) -> int:
    """The smallest bucket that holds ``length`` keys, capped at the cache's capacity."""
    for b in _SMALL_BUCKETS:
        if length <= b:
            return min(b, capacity)
    return min(-(-length // _BUCKET_STEP) * _BUCKET_STEP, capacity)


def graphs_supported(model: GptOss) -> tuple[bool, str]:
    """Graphs need every weight a step touches on the GPU and kernels that never synchronise with the host."""
    if model.device.type != "cuda":
        return False, "not on a CUDA device"
    if not model.ops.graph_safe:
        return False, f"the {model.ops.name} path synchronises with the host"
    if any(layer.gate_up_blocks.device != model.device for layer in model.layers):
        return False, "some experts live in system RAM"
    return True, "ok"


class DecodeGraphs:
    def __init__(self, model: GptOss, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        cfg, dev = model.cfg, model.device
        self.x = torch.zeros(1, cfg.hidden_size, dtype=model.dtype, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        w = model.lm_head
        self.logits_inside = (w.q.device if isinstance(w, Int8Weight) else w.device) == dev
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _body(self, kv_len: int) -> torch.Tensor:
        step = self.model.ops.decode_step
        if step is not None:
            hidden = step(self.model, self.x, self.pos, self.cache, kv_len)
        else:
            hidden = self.model.layers_forward(self.x, self.pos,
                                               partial(self.cache.update_static, kv_len=kv_len))
        return self.model.logits(hidden) if self.logits_inside else hidden

    def _capture(self, kv_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up on a side stream compiles the kernels for these shapes; it writes the same K/V the step will.
        side = torch.cuda.Stream(device=self.x.device)
        side.wait_stream(torch.cuda.current_stream(self.x.device))
        with torch.cuda.stream(side):
            self._body(kv_len)
        torch.cuda.current_stream(self.x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._body(kv_len)
        self.graphs[kv_len] = (graph, out)
        return graph, out

    def step(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """Run one decode token (embedded ``x`` [1, H]) at ``position``; returns float32 logits [1, vocab]."""
        self.x.copy_(x)
        self.pos.fill_(position)
        kv_len = kv_bucket(position + 1, self.cache.context_length)
        graph, out = self.graphs.get(kv_len) or self._capture(kv_len)
        graph.replay()
        return out if self.logits_inside else self.model.logits(out)
