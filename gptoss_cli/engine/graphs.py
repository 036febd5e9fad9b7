"""Decode captured in CUDA graphs: one graph per KV-length bucket (and sampling setting), replayed each token.

A decode step is ~400 small kernels at batch 1; launching them one by one costs more than the bytes they move.
A graph replays them with the launch gaps closed. Full-attention layers read the cache up to a bucket (a power of
two up to 4k, then multiples of 4k) so one graph serves many lengths while reading at most one bucket step of
empty slots (masked by their position -1). Graphs are captured lazily, the first time a bucket is reached.

The graph's input is a token id already on the GPU (the embedding row is looked up inside it when the table is on
the GPU) and, given a sampler, its last kernels sample the next id into that same input, so the engine can queue
the next step on an id it has not read back yet. Where graphs do not
exist (a CPU device, in tests) the same step body runs eagerly behind the same interface.
"""

from __future__ import annotations

from functools import partial

import torch

from ..model.cache import KVCache
from ..model.transformer import GptOss, Int8Weight
from .sampling import Sampler

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
    if any(layer.gate_up_blocks.device != model.device and not layer.gate_up_blocks.is_pinned()
           for layer in model.layers):
        return False, "some experts live in system RAM that the GPU cannot read in place"
    return True, "ok"


class DecodeGraphs:
    def __init__(self, model: GptOss, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        cfg, dev = model.cfg, model.device
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.x = torch.zeros(1, cfg.hidden_size, dtype=model.dtype, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.u = torch.zeros(1, dtype=torch.float32, device=dev)  # the sampler's uniform number for this step
        w = model.lm_head
        self.logits_inside = (w.q.device if isinstance(w, Int8Weight) else w.device) == dev
        # a table the plan keeps in RAM is read on the host, outside the graph, into self.x
        self.embed_inside = model.embedding.device == dev
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if dev.type == "cuda" else None

    @property
    def samples_inside(self) -> bool:
        """Whether a step can end with the next token sampled into ``self.token`` (token in, token out)."""
        return self.embed_inside and self.logits_inside

    def _body(self, kv_len: int, sampler: Sampler | None) -> torch.Tensor:
        x = self.model.embed(self.token) if self.embed_inside else self.x
        step = self.model.ops.decode_step
        if step is not None:
            hidden = step(self.model, x, self.pos, self.cache, kv_len)
        else:
            hidden = self.model.layers_forward(x, self.pos, partial(self.cache.update_static, kv_len=kv_len))
        if not self.logits_inside:
            return hidden
        logits = self.model.logits(hidden)
        if sampler is not None:
            sampler.pick(logits[0], self.u, out=self.token)
        return logits

    def _capture(self, key: tuple, kv_len: int, sampler: Sampler | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # The warm-up compiles and loads the kernels for these shapes, which capture cannot do. It runs on the
        # current stream, from blocks that stream has cached (a side stream would need fresh ones, which a card
        # sized by the plan may not have), and writes the same K/V the step will; it also samples into
        # self.token, so the input id is put back before the graph first runs.
        token = self.token.clone()
        self._body(kv_len, sampler)
        self.token.copy_(token)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._body(kv_len, sampler)
        self.graphs[key] = (graph, out)
        return graph, out

    def step(self, token: int | None, position: int, sampler: Sampler | None = None) -> torch.Tensor:
        """Run one decode token at ``position``; returns float32 logits [1, vocab], a buffer the next step
        overwrites. ``token``: an id, or None for the id already in ``self.token`` (a previous step sampled it
        there; needs ``samples_inside``). With ``sampler`` the step also samples the next id into ``self.token``,
        inside the graph."""
        if (token is None or sampler is not None) and not self.samples_inside:
            raise ValueError("sampling inside the step needs the embedding and lm_head on the GPU")
        if token is not None and self.embed_inside:
            self.token.fill_(token)
        elif token is not None:  # the table is in RAM: look the row up there
            self.x.copy_(self.model.embed(torch.tensor([token])))
        if sampler is not None and sampler.params.temperature > 0:
            self.u.fill_(sampler.draw())
        self.pos.fill_(position)
        kv_len = kv_bucket(position + 1, self.cache.context_length)
        if self.pool is None:
            out = self._body(kv_len, sampler)
        else:
            key = (kv_len, sampler.params if sampler is not None else None)
            graph, out = self.graphs.get(key) or self._capture(key, kv_len, sampler)
            graph.replay()
        return out if self.logits_inside else self.model.logits(out)
