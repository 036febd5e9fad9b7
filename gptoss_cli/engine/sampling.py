"""Turning logits into the next token: greedy, temperature, top-k, top-p, with a seedable generator.

OpenAI recommends temperature 1.0 and top_p 1.0 for gpt-oss; temperature 0 means greedy argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


class Sampler:
    """Stateful so one seed fixes a whole generation. The random numbers come from a CPU generator (the same
    stream on any device); the draw itself is an inverse-CDF lookup where the logits are, so only the chosen
    index crosses back to the host, not the whole distribution."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator(device="cpu")
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """logits [vocab] (any device, any float dtype) -> token id."""
        p = self.params
        if p.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits.float() / p.temperature
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the token that crosses it stays).
            drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= p.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.rand((), generator=self.generator).item() * cdf[-1]
        # the first index whose cumulative mass exceeds u: never a token of probability zero
        return min(int(torch.searchsorted(cdf, u.reshape(1), right=True)), probs.shape[-1] - 1)
