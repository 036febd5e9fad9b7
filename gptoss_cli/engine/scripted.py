"""The engine seam: what a chat session needs from an engine, and a scripted engine that replays token streams.

The local :class:`~gptoss_cli.engine.generator.Engine` is one implementation; tests use :class:`ScriptedEngine`,
which replays recorded completions and accounts for prefix reuse exactly as the real engine does, so a test can
assert that a follow-up turn prefills only its new tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .generator import DEFAULT_STOP, GenerationStats, _common_prefix


class ChatEngine(Protocol):
    context_length: int
    stats: GenerationStats
    stop_ids: tuple[int, ...]

    def generate(self, ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: Iterable[int] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[int]: ...

    def reset(self) -> None: ...


@dataclass
class ScriptedEngine:
    """Replays ``responses`` (one token list per ``generate`` call), in order.

    Records every prompt it was given (``prompts``) and keeps the same prefix-reuse bookkeeping as the real engine:
    ``stats.reused_tokens`` is the common prefix with the tokens it already "computed".
    ``delay`` (seconds per token) lets terminal tests interrupt a reply midway.
    """

    responses: list[list[int]]
    context_length: int = 131072
    stop_ids: tuple[int, ...] = DEFAULT_STOP
    delay: float = 0.0
    prompts: list[list[int]] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    tokens: list[int] = field(default_factory=list)

    def generate(self, ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: Iterable[int] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[int]:
        if not self.responses:
            raise RuntimeError("ScriptedEngine has no scripted response left")
        ids = list(ids)
        self.prompts.append(ids)
        stops = set(self.stop_ids if stop is None else stop)
        reused = _common_prefix(self.tokens, ids)
        reused = min(reused, len(ids) - 1)
        self.stats = stats = GenerationStats(prompt_tokens=len(ids), reused_tokens=reused,
                                             prefill_tokens=len(ids) - reused)
        self.tokens = list(ids)
        script = self.responses.pop(0)
        t0 = time.perf_counter()
        script = script[:max_new_tokens]
        for i, token in enumerate(script):
            if self.delay:
                time.sleep(self.delay)
            if i == 0:
                stats.ttft_seconds = time.perf_counter() - t0
            stats.generated_tokens += 1
            yield token
            if token in stops:
                stats.finish_reason = "stop"
                break
            if should_stop is not None and should_stop():
                stats.finish_reason = "cancelled"
                break
            if i + 1 < len(script):  # as the real engine: the last sampled token is not fed yet
                self.tokens.append(token)
        else:
            stats.finish_reason = "length"
        stats.decode_seconds = time.perf_counter() - t0

    def reset(self) -> None:
        self.tokens = []
