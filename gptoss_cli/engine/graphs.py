"""Decode captured in CUDA graphs: one graph per KV-length bucket (and sampling setting), replayed each token.

A decode step is ~400 small kernels at batch 1; launching them one by one costs more than the bytes they move.
A graph replays them with the launch gaps closed. Full-attention layers read the cache up to a bucket (a power of
two up to 4k, then multiples of 4k) so one graph serves many lengths while reading at most one bucket step of
empty slots (masked by their position -1). Graphs are captured lazily, the first time a bucket is reached.

The graph's input is a token id already on the GPU (the embedding row is looked up inside it when the table is on
the GPU) and, given a sampler, its last kernel publishes the next id: into that same input, so the engine can queue
the next step on an id it has not read back yet; into a pinned host buffer the GPU writes in place, which the host
reads once the step's event has passed (no copy between graphs); and it advances the position the graph reads, so
consecutive steps need no fill either. Where graphs do not exist (a CPU device, in tests) the same step body runs
eagerly behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
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


def publish_torch(logits: torch.Tensor | None, token: torch.Tensor, host: torch.Tensor, pos: torch.Tensor) -> None:
    """The end of a sampling step in torch (the eager CPU path): greedy id from ``logits`` (None: ``token`` already
    holds the sampled id) into ``token`` and ``host[(pos + 1) % n]``, then pos += 1. gptoss_kernels.sample's
    ``Publisher`` does the same in one Triton launch."""
    if logits is not None:
        torch.argmax(logits, dim=-1, keepdim=True, out=token)
    host.index_copy_(0, ((pos + 1) % host.numel()).to(host.device), token.to(host.device))
    pos.add_(1)


def _publisher(model: GptOss) -> Callable[..., None]:
    """The Triton publish where the model runs its kernels (CUDA graphs, or the CPU interpreter), else torch's."""
    from ..model.fast import kernels_run_on

    if model.ops.graph_safe and kernels_run_on(model.device):
        from gptoss_kernels.sample import Publisher

        return Publisher(model.device)
    return publish_torch


class DecodeGraphs:
    HOST_SLOTS = 2  # ids in flight to the host: the engine reads one step's id while the next step runs

    def __init__(self, model: GptOss, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        cfg, dev = model.cfg, model.device
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.x = torch.zeros(1, cfg.hidden_size, dtype=model.dtype, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos_now: int | None = None  # the position ``self.pos`` holds (None: unknown); a sampling step adds one
        # the id for position p lands in host_ids[p % HOST_SLOTS]; pinned so the GPU writes it in place
        self.host_ids = torch.zeros(self.HOST_SLOTS, dtype=torch.long, pin_memory=dev.type == "cuda")
        self.publish = _publisher(model)
        self.u = torch.zeros(1, dtype=torch.float32, device=dev)  # the sampler's uniform number for this step
        w = model.lm_head
        self.logits_inside = (w.q.device if isinstance(w, Int8Weight) else w.device) == dev
        # A table the plan keeps in RAM is pinned (engine/generator.py): the fused step reads the token's row in
        # place. Without the fused step it is read on the host, outside the graph, into self.x.
        table = model.embedding
        self.embed_inside = table.device == dev or (dev.type == "cuda" and table.is_pinned()
                                                    and model.ops.decode_step is not None)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if dev.type == "cuda" else None

    @property
    def samples_inside(self) -> bool:
        """Whether a step can end with the next token sampled into ``self.token`` (token in, token out)."""
        return self.embed_inside and self.logits_inside

    def _body(self, kv_len: int, sampler: Sampler | None) -> torch.Tensor:
        step = self.model.ops.decode_step
        if step is not None:  # the fused step looks the id up itself
            hidden = step(self.model, self.token if self.embed_inside else self.x, self.pos, self.cache, kv_len)
        else:
            x = self.model.embed(self.token) if self.embed_inside else self.x
            hidden = self.model.layers_forward(x, self.pos, partial(self.cache.update_static, kv_len=kv_len))
        if not self.logits_inside:
            return hidden
        logits = self.model.logits(hidden)
        if sampler is not None:
            if sampler.params.temperature == 0:
                self.publish(logits[0], self.token, self.host_ids, self.pos)
            else:
                sampler.pick(logits[0], self.u, out=self.token)
                self.publish(None, self.token, self.host_ids, self.pos)
        return logits

    def _capture(self, key: tuple, kv_len: int, sampler: Sampler | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # The warm-up compiles and loads the kernels for these shapes, which capture cannot do. It runs on the
        # current stream, from blocks that stream has cached (a side stream would need fresh ones, which a card
        # sized by the plan may not have), and writes the same K/V the step will; it also samples into
        # self.token and advances self.pos, so both are put back before the graph first runs.
        token, pos = self.token.clone(), self.pos.clone()
        self._body(kv_len, sampler)
        self.token.copy_(token)
        self.pos.copy_(pos)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._body(kv_len, sampler)
        self.graphs[key] = (graph, out)
        return graph, out

    def step(self, token: int | None, position: int, sampler: Sampler | None = None) -> torch.Tensor:
        """Run one decode token at ``position``; returns float32 logits [1, vocab], a buffer the next step
        overwrites. ``token``: an id, or None for the id already in ``self.token`` (a previous step sampled it
        there; needs ``samples_inside``). With ``sampler`` the step also samples the next id, inside the graph, into
        ``self.token`` and for the host (``sampled``), and moves the graph's position on to ``position + 1``."""
        if (token is None or sampler is not None) and not self.samples_inside:
            raise ValueError("sampling inside the step needs the embedding and lm_head on the GPU")
        if token is not None and self.embed_inside:
            self.token.fill_(token)
        elif token is not None:  # the table is in RAM: look the row up there
            self.x.copy_(self.model.embed(torch.tensor([token])))
        if sampler is not None and sampler.params.temperature > 0:
            self.u.fill_(sampler.draw())
        if self.pos_now != position:
            self.pos.fill_(position)
        self.pos_now = None  # unknown until the step has run: an exception may stop it before the graph launches
        kv_len = kv_bucket(position + 1, self.cache.context_length)
        if self.pool is None:
            out = self._body(kv_len, sampler)
        else:
            key = (kv_len, sampler.params if sampler is not None else None)
            graph, out = self.graphs.get(key) or self._capture(key, kv_len, sampler)
            graph.replay()
        self.pos_now = position + 1 if sampler is not None else position
        return out if self.logits_inside else self.model.logits(out)

    def sampled(self, position: int) -> int:
        """The id a sampling step published for ``position`` (the step at ``position - 1``); read it only after
        that step has completed (an event recorded after it has passed)."""
        return int(self.host_ids[position % self.HOST_SLOTS])
