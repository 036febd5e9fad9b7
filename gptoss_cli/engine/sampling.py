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
        return int(self.pick(logits))

    def draw(self) -> float:
        """The next uniform number of this generation's stream (one per sampled token)."""
        return torch.rand((), generator=self.generator).item()

    def pick(self, logits: torch.Tensor, u: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """logits [vocab] -> the token id as a long tensor [1] where the logits are, without waiting for it: the
        engine queues the next decode step on that tensor before it reads the id back. ``u``: the uniform number
        as a tensor [1] on the logits' device (a CUDA graph's input, filled from ``draw`` before each replay);
        by default one is drawn here. ``out``: a long tensor [1] to write the id into (greedy picks write it
        directly, one kernel less in each decode step)."""
        p = self.params
        if p.temperature == 0:
            return torch.argmax(logits, dim=-1, keepdim=True, out=out)
        if out is not None:
            return out.copy_(self.pick(logits, u))
        logits = logits.float() / p.temperature
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        # Cumulative sums in float64: a CUDA float cumsum is not the same run to run (its scan adds in an order set
        # by timing), and in float32 that moved a draw across a token boundary once in ~100 tokens on an H200;
        # float64 leaves ~1e-13 of room instead of ~1e-6.
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            # Keep the smallest prefix whose mass reaches top_p (the token that crosses it stays).
            drop = (torch.cumsum(sorted_probs.double(), dim=-1) - sorted_probs.double()) >= p.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        cdf = torch.cumsum(probs.double(), dim=-1)
        # the first index whose cumulative mass exceeds u (drawn on the host: no device round trip): never a token
        # of probability zero. u is a float32 tensor in both loops, so a draw inside a CUDA graph and one outside it
        # do the same arithmetic (with u as a Python float they differed).
        if u is None:
            u = torch.full((1,), self.draw(), dtype=torch.float32, device=logits.device)
        target = cdf[-1:] * u.double()
        return torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
