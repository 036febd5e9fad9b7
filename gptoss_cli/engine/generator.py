"""The local engine: load a checkpoint, prefill and decode with a KV cache, stream token ids.

The engine remembers which token ids its cache holds, so a chat that sends its whole history each turn only pays
for the tokens after the longest common prefix (rewinding through the cache's ring snapshots where needed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..model.cache import KVCache
from ..model.checkpoint import load_tensors
from ..model.config import GptOssConfig
from ..model.transformer import REFERENCE_OPS, GptOss, Ops
from .graphs import DecodeGraphs, graphs_supported
from .offload import ExpertOffload, remember_h2d, with_offload
from .sampling import Sampler, SamplingParams

DEFAULT_STOP = (200002, 200012, 199999)  # <|return|>, <|call|>, <|endoftext|>


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose K/V were already cached
    prefill_tokens: int = 0  # prompt tokens computed this call
    prefill_seconds: float = 0.0
    ttft_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop", "length", "cancelled"

    @property
    def decode_tokens_per_second(self) -> float:
        return (self.generated_tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


class PlacementPlan(Protocol):
    """What the engine reads from a planner's Plan (see plan.py)."""

    expert_cache_slots: int
    embedding: str
    lm_head: str
    experts_on_gpu: tuple[int, ...]
    context_length: int
    attn_precision: str
    lm_head_precision: str
    prefill_chunk: int


@dataclass
class Engine:
    model: GptOss
    config: GptOssConfig
    cache: KVCache
    stop_ids: tuple[int, ...] = DEFAULT_STOP
    prefill_chunk: int = 1024
    model_dir: Path | None = None
    load_seconds: float = 0.0
    tokens: list[int] = field(default_factory=list)  # ids whose K/V the cache holds, in order
    stats: GenerationStats = field(default_factory=GenerationStats)
    graphs: DecodeGraphs | None = None  # CUDA-graph decode, where supported
    offload: ExpertOffload | None = None  # experts served from host RAM, where the plan put them
    notes: list[str] = field(default_factory=list)  # what the user should know about how this engine runs

    @property
    def path_name(self) -> str:
        return self.model.ops.name + (" + CUDA graphs" if self.graphs is not None else "")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context_length(self) -> int:
        return self.cache.context_length

    # ---- the small public API ----------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """float32 [len(ids), vocab] from one full forward over a fresh cache (the session cache is untouched)."""
        cache = KVCache(self.config, max(len(ids), 1), self.device, self.model.dtype)
        hidden = self.model.forward(self._ids(ids), cache)
        return self.model.logits(hidden)

    def generate(
        self,
        ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Iterable[int] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` ids after the prompt ``ids``; the stop id that ends it is yielded too.

        Stop between tokens by closing the iterator (``break``) or through ``should_stop``; the cache stays
        consistent either way, and a later call with a longer history reuses it.
        """
        sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed))
        stops = set(self.stop_ids if stop is None else stop)
        stats = self.stats = GenerationStats(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        last = self.prefill(ids)
        stats.prefill_seconds = time.perf_counter() - t0
        t_first = 0.0
        cancelled = False

        def cancel() -> bool:
            nonlocal cancelled
            cancelled = should_stop is not None and should_stop()
            return cancelled

        try:
            for token in self.decode(last, sampler, max_new_tokens, stops, cancel):
                stats.generated_tokens += 1
                if stats.generated_tokens == 1:
                    t_first = time.perf_counter()
                    stats.ttft_seconds = t_first - t0
                yield token
                if token in stops:
                    stats.finish_reason = "stop"
            if not stats.finish_reason:
                stats.finish_reason = "cancelled" if cancelled else "length"
        finally:
            if t_first:
                stats.decode_seconds = time.perf_counter() - t_first

    @torch.inference_mode()
    def decode(self, logits: torch.Tensor, sampler: Sampler, max_new_tokens: int, stops: Iterable[int] = (),
               should_stop: Callable[[], bool] | None = None) -> Iterator[int]:
        """Sample from ``logits`` (the last prefilled token's), then keep stepping: yields up to ``max_new_tokens``
        ids; a stop id (yielded) or ``should_stop()`` after a yield ends it.

        With CUDA graphs each step samples the next id inside the graph, into the graph's own input and a pinned
        host buffer, and the next step is queued before that id is read, so the GPU never waits for the host
        between tokens. The step is committed to the cache once its id is known to continue the text; otherwise
        the slots it wrote at the cache's length are emptied again (``drop_uncommitted``).
        """
        stops = set(stops)
        if self.graphs is None or not self.graphs.samples_inside:
            for i in range(max_new_tokens):
                token = sampler(logits)
                yield token
                if token in stops or (should_stop is not None and should_stop()):
                    return
                if i + 1 < max_new_tokens:
                    logits = self.step(token)
            return
        cuda = self.device.type == "cuda"
        graphs = self.graphs
        ready = [torch.cuda.Event(), torch.cuda.Event()] if cuda else []  # step i's id has reached the host
        first = self.cache.length  # the position of the first id; id i is the input of the step at first + i
        token_in = graphs.token  # the graph's input id; each step samples the next one into it
        token_in.copy_(sampler.pick(logits))
        graphs.host_ids[first % graphs.HOST_SLOTS].copy_(token_in[0], non_blocking=cuda)
        if cuda:
            ready[0].record()
        pending = False  # a queued step not committed yet
        try:
            for i in range(max_new_tokens):
                queued = i + 1 < max_new_tokens and self.cache.length < self.cache.context_length
                if queued:
                    pending = True
                    self._graph_step(None, sampler)  # publishes id i + 1 for the host
                    if cuda:
                        ready[(i + 1) % 2].record()
                if cuda:
                    ready[i % 2].synchronize()
                token = graphs.sampled(first + i)
                yield token
                if token in stops or (should_stop is not None and should_stop()):
                    return
                if i + 1 < max_new_tokens:
                    if not queued:
                        self.cache.check_room(1)  # raises: the context is full
                    self.cache.advance(1)
                    self.tokens.append(token)
                    pending = False
        finally:
            if pending:
                self.cache.drop_uncommitted()

    # ---- the session protocol -------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Make the cache hold exactly ``ids`` and return the last token's logits (float32 [vocab])."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        ids = list(ids)
        common = _common_prefix(self.tokens, ids)
        if common == len(ids):  # nothing new: recompute the last token to get its logits
            common -= 1
        kept = self.cache.trim(common)
        del self.tokens[kept:]
        self.stats.reused_tokens = kept
        self.stats.prefill_tokens = len(ids) - kept
        new = ids[kept:]
        self.cache.check_room(len(new))
        hidden = None
        for start in range(0, len(new), self.prefill_chunk):
            hidden = self._forward(new[start:start + self.prefill_chunk])
        self.cache.mark()
        assert hidden is not None
        return self.model.logits(hidden[-1:])[0]

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append one token; return its logits (float32 [vocab])."""
        if self.graphs is None:
            return self.model.logits(self._forward([token]))[0]
        self._check_ids([token])
        self.cache.check_room(1)
        logits = self._graph_step(token)
        self.cache.advance(1)
        self.tokens.append(token)
        return logits[0].clone()  # the graph's output buffer is overwritten by the next replay

    def _graph_step(self, token: int | None, sampler: Sampler | None = None) -> torch.Tensor:
        """One graph replay at the cache's length, not committed (the caller advances the cache)."""
        before = self.cache.length
        if self.offload is not None and self.offload.in_place:
            self.offload.check_share()
            self.offload.count_in_place(1)
        try:
            return self.graphs.step(token, before, sampler)
        except BaseException:
            kept = self.cache.trim(before, force=True)
            del self.tokens[kept:]
            raise

    def reset(self) -> None:
        self.cache.reset()
        self.tokens.clear()

    # ---- internals --------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int]) -> None:
        vocab = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        self._check_ids(ids)
        return torch.tensor(list(ids), dtype=torch.long, device=self.device)

    def _forward(self, chunk: list[int]) -> torch.Tensor:
        """One forward that leaves the cache consistent even if interrupted (Ctrl-C) midway."""
        before = self.cache.length
        try:
            hidden = self.model.forward(self._ids(chunk), self.cache)
        except BaseException:
            kept = self.cache.trim(before, force=True)
            del self.tokens[kept:]
            raise
        self.tokens.extend(chunk)
        return hidden


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import GptossError

        raise GptossError("CUDA was requested but torch sees no NVIDIA GPU",
                          hint="Run `gptoss doctor`, or use --device cpu (slow).")
    if dev.type == "cuda" and dev.index is None:  # tensors report cuda:N; compare like with like
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def read_stop_ids(model_dir: Path) -> tuple[int, ...]:
    """Stop ids from generation_config.json (eos_token_id), with <|return|> and <|call|> always included."""
    path = model_dir / "generation_config.json"
    ids: list[int] = []
    if path.is_file():
        try:
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id", [])
            ids = [eos] if isinstance(eos, int) else [i for i in eos if isinstance(i, int)]
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            ids = []
    return tuple(dict.fromkeys([*ids, *DEFAULT_STOP]))


def choose_ops(device: torch.device, fast: bool | None) -> tuple[Ops, str | None]:
    """The Triton fast path on CUDA when Triton works (``fast=True`` forces it, e.g. under Triton's CPU
    interpreter), else the torch reference; the second value says why the fast path is off, for the user."""
    from ..model.fast import fast_ops, triton_available

    if fast:
        return fast_ops(), None
    if fast is False or device.type != "cuda":
        return REFERENCE_OPS, None

    ok, reason = triton_available()
    if not ok:
        return REFERENCE_OPS, f"running on the slower torch path: {reason}"
    return fast_ops(), None


def _finish(net: GptOss, cfg: GptOssConfig, dev: torch.device, context: int, chunk: int, graphs: bool | None,
            note: str | None, t0: float, cache_slots: int = 0, **kwargs: Any) -> Engine:
    offload = with_offload(net, cache_slots) if dev.type == "cuda" else None
    if offload is not None:
        remember_h2d(dev)  # the rate that bounds this decode, for the next plan's estimate
    if net.ops.name.startswith("triton"):
        from ..model.fast import pair_experts

        pair_experts(net)  # before the KV cache takes its memory: the re-lay needs a few tens of MB of scratch
    if dev.type == "cuda" and net.embedding.device.type == "cpu" and net.embedding is not net.lm_head:
        # the plan keeps the table in RAM: pinned, a decode step's kernel reads its one row in place, and the
        # engine's loop keeps sampling inside the CUDA graph (no host round trip a token)
        net.embedding = net.embedding.pin_memory()
    cache = KVCache(cfg, context, dev, net.dtype)
    engine = Engine(model=net, config=cfg, cache=cache, prefill_chunk=chunk, offload=offload, **kwargs)
    if note:
        engine.notes.append(note)
    if offload is not None:
        engine.notes.extend(offload.notes)
    ok, why = graphs_supported(net)
    if graphs is not False and ok:
        engine.graphs = DecodeGraphs(net, cache)
    elif graphs and not ok:
        engine.notes.append(f"CUDA graphs are off: {why}")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    engine.load_seconds = time.perf_counter() - t0
    return engine


def placement(plan: PlacementPlan | None, dev: torch.device) -> Callable[[str], torch.device]:
    """Where each hub-named tensor is loaded: the plan's GPU/RAM split. Weights the plan quantizes to int8 load
    on the host first, so their bf16 copy never takes VRAM."""
    host = torch.device("cpu")
    attn_int8 = plan is not None and plan.attn_precision == "int8"
    head_int8 = plan is not None and plan.lm_head_precision == "int8"

    def device_for(name: str) -> torch.device:
        if plan is None or dev.type == "cpu":
            return dev
        if name.startswith("model.embed_tokens"):
            return dev if plan.embedding == "gpu" else host
        if name.startswith("lm_head"):
            return dev if plan.lm_head == "gpu" and not head_int8 else host
        if ".mlp.experts." in name:
            layer = int(name.split(".")[2])
            return dev if layer in plan.experts_on_gpu else host
        if attn_int8 and ".self_attn." in name and name.endswith("_proj.weight"):
            return host
        return dev

    return device_for


def _lm_head_device(plan: PlacementPlan | None, dev: torch.device) -> torch.device:
    return torch.device("cpu") if plan is not None and plan.lm_head != "gpu" else dev


def load(model: Any, device: str = "auto", dtype: torch.dtype | None = None, context_length: int | None = None,
         plan: PlacementPlan | None = None, progress: Callable[[int, int], None] | None = None,
         fast: bool | None = None, graphs: bool | None = None) -> Engine:
    """Load a model directory in the hub layout.

    ``dtype`` is the compute dtype (default bf16, the checkpoint's own; tests use float32). ``plan`` (from
    plan.py) places the embedding, lm_head and each layer's experts, picks int8 for attention/lm_head and sizes
    the context; without one everything goes on ``device`` in bf16. ``fast``/``graphs``: None = where supported.
    ``progress(done, total)`` is called per tensor.
    """
    t0 = time.perf_counter()
    model_dir = Path(model)
    cfg = GptOssConfig.from_file(model_dir)
    dev = resolve_device(device)
    dtype = dtype or torch.bfloat16
    attn_int8 = plan is not None and plan.attn_precision == "int8"
    head_int8 = plan is not None and plan.lm_head_precision == "int8"
    device_for = placement(plan, dev)

    from ..model.checkpoint import expected_tensors

    total = len(expected_tensors(cfg))
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in load_tensors(model_dir, cfg, dtype, device_for):
        tensors[name] = tensor
        if progress is not None:
            progress(len(tensors), total)
    ops, note = choose_ops(dev, fast)
    net = GptOss.from_tensors(cfg, tensors, dev, dtype, attn_int8=attn_int8, lm_head_int8=head_int8, ops=ops,
                              lm_head_device=_lm_head_device(plan, dev))
    ctx = context_length or (plan.context_length if plan is not None else cfg.max_position_embeddings)
    chunk = plan.prefill_chunk if plan is not None else 1024
    slots = plan.expert_cache_slots if plan is not None else 0
    return _finish(net, cfg, dev, ctx, chunk, graphs, note, t0, cache_slots=slots,
                   stop_ids=read_stop_ids(model_dir), model_dir=model_dir)


def load_random(cfg: GptOssConfig, device: str = "auto", dtype: torch.dtype | None = None,
                context_length: int = 4096, seed: int = 0, int8: bool = False, fast: bool | None = None,
                graphs: bool | None = None, plan: PlacementPlan | None = None, peaked: bool = False) -> Engine:
    """An engine over random weights built in memory at ``cfg``'s shape (drawn on the target device), for
    benchmarks that need no download. Experts are real MXFP4 from the quantizer; ``int8`` quantizes attention
    and lm_head as the plan's quantised option does. ``peaked``: the better-conditioned random model of
    ``random_weights.random_tensors`` (confident successor-bigram predictions, layers ~50% of the residual
    stream), for comparing paths by top-1 agreement."""
    from ..model.random_weights import random_tensors

    t0 = time.perf_counter()
    dev = resolve_device(device)
    dtype = dtype or torch.bfloat16
    device_for = placement(plan, dev)
    tensors = {name: (t if t.dtype == torch.uint8 else t.to(dtype)).to(device_for(name))
               for name, t in random_tensors(cfg, seed, dev, peaked=peaked)}
    if plan is not None:
        int8 = plan.attn_precision == "int8"
    head_int8 = plan.lm_head_precision == "int8" if plan is not None else int8
    ops, note = choose_ops(dev, fast)
    net = GptOss.from_tensors(cfg, tensors, dev, dtype, attn_int8=int8, lm_head_int8=head_int8, ops=ops,
                              lm_head_device=_lm_head_device(plan, dev))
    slots = plan.expert_cache_slots if plan is not None else 0
    ctx = plan.context_length if plan is not None else context_length
    chunk = plan.prefill_chunk if plan is not None else 1024
    return _finish(net, cfg, dev, ctx, chunk, graphs, note, t0, cache_slots=slots)
