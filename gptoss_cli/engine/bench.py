"""``gptoss bench``: prefill and decode speed, TTFT, load time and memory, as llama-bench reports them.

Decode is timed over whole greedy generations through the engine's own decode loop, after a warm-up; every figure
is the median of ``repeats`` runs. The bandwidth floor counts the bytes one decode token must read (the k routed
experts, attention, router, norms, lm_head, and the KV cache at the given depth) over the device's measured copy
bandwidth. On CUDA the pinned host -> GPU rate is measured too (it bounds decode with experts in RAM).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ..model.config import GptOssConfig
from .generator import Engine
from .offload import ExpertOffload, measure_h2d
from .sampling import Sampler, SamplingParams


@dataclass
class BenchResult:
    model: str
    device: str
    path: str
    load_seconds: float
    prefill_tok_s: dict[int, float] = field(default_factory=dict)
    ttft_ms: dict[int, float] = field(default_factory=dict)
    decode_tok_s: dict[int, float] = field(default_factory=dict)  # context depth -> tok/s
    floor_tok_s: dict[int, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    bandwidth_gb_s: float = 0.0
    h2d_gb_s: float = 0.0  # pinned host -> GPU copies (0 on the CPU)
    repeats: int = 0
    # experts the plan keeps in RAM: per decode token, what crossed PCIe and what the CPU computed (None: no offload)
    offload: dict | None = None

    def percent_of_floor(self, depth: int) -> float:
        floor = self.floor_tok_s.get(depth, 0.0)
        return 100.0 * self.decode_tok_s[depth] / floor if floor else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["percent_of_floor"] = {d: self.percent_of_floor(d) for d in self.decode_tok_s}
        return out


def decode_bytes_per_token(cfg: GptOssConfig, depth: int, weight_bytes: int = 2, kv_bytes: int = 2) -> int:
    """Bytes a batch-1 decode step must read: weights it touches plus the KV cache it attends over."""
    H, I, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts_per_tok
    expert = (2 * I * H + H * I) * 17 // 32 + (2 * I + H) * 2  # MXFP4: 4.25 bits per weight incl. scales; bf16 bias
    attn = (cfg.q_dim * H + 2 * cfg.kv_dim * H + H * cfg.q_dim) * weight_bytes + (cfg.q_dim + 2 * cfg.kv_dim + H) * 2
    router = cfg.num_local_experts * (H + 1) * 2 + 2 * H * 4
    per_layer = k * expert + attn + router
    lm_head = cfg.vocab_size * H * weight_bytes
    kv = 0
    for layer in range(cfg.num_hidden_layers):
        span = min(depth + 1, cfg.sliding_window) if cfg.is_sliding(layer) else depth + 1
        kv += span * 2 * cfg.kv_dim * kv_bytes
    return cfg.num_hidden_layers * per_layer + lm_head + H * 2 + kv


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written (median of 10)."""
    if device.type != "cuda":
        return 0.0
    try:
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
    except torch.OutOfMemoryError:  # a VRAM cap (bench --vram) leaves less: a smaller copy still sees DRAM speed
        nbytes //= 8
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del src, dst
    return 2 * nbytes / statistics.median(times[2:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, min(vocab, 199998), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_bench(engine: Engine, name: str, prompts: list[int], depths: list[int], decode_tokens: int = 128,
              repeats: int = 3, progress: Callable[[str], None] | None = None) -> BenchResult:
    say = progress or (lambda _msg: None)
    dev = engine.device
    cfg = engine.config
    result = BenchResult(model=name, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                         path=getattr(engine, "path_name", "reference"), load_seconds=engine.load_seconds,
                         repeats=repeats)
    result.bandwidth_gb_s = measure_bandwidth(dev) / 1e9
    if dev.type == "cuda":
        result.h2d_gb_s = measure_h2d(dev) / 1e9
    if dev.type == "cuda":  # peak memory of the model's own work, not of the bandwidth probe or the load
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    # warm-up: compile kernels, capture graphs
    say("warming up")
    engine.reset()
    list(engine.generate(_random_ids(64, cfg.vocab_size, 0), max_new_tokens=8, temperature=0, stop=[]))
    for n in prompts:
        runs, ttfts = [], []
        for r in range(repeats):
            say(f"prefill {n} tokens ({r + 1}/{repeats})")
            engine.reset()
            ids = _random_ids(n, cfg.vocab_size, 100 + r)
            _sync(dev)
            t0 = time.perf_counter()
            logits = engine.prefill(ids)
            int(torch.argmax(logits))  # the first token is known only once this syncs
            _sync(dev)
            elapsed = time.perf_counter() - t0
            runs.append(n / elapsed)
            ttfts.append(elapsed * 1000)
        result.prefill_tok_s[n] = statistics.median(runs)
        result.ttft_ms[n] = statistics.median(ttfts)
    off = engine.offload
    greedy = Sampler(SamplingParams(temperature=0))
    moved = {"tokens": 0, "hits": 0, "misses": 0, "bytes_from_host": 0, "cpu_experts": 0, "cpu_bytes": 0}
    for depth in depths:
        runs = []
        for r in range(repeats):
            say(f"decode {decode_tokens} tokens at depth {depth} ({r + 1}/{repeats})")
            engine.reset()
            ids = _random_ids(max(depth, 1), cfg.vocab_size, 200 + r)
            logits = engine.prefill(ids)
            _sync(dev)
            t0 = time.perf_counter()
            before = {k: getattr(off.stats, k) for k in moved if k != "tokens"} if off else {}
            # the engine's own greedy loop (the one generation runs): decode_tokens steps after the first id
            produced = sum(1 for _ in engine.decode(logits, greedy, decode_tokens + 1)) - 1
            _sync(dev)
            runs.append(produced / (time.perf_counter() - t0))
            if off:
                moved["tokens"] += produced
                for k, v in before.items():
                    moved[k] += getattr(off.stats, k) - v
        result.decode_tok_s[depth] = statistics.median(runs)
        if result.bandwidth_gb_s:
            result.floor_tok_s[depth] = result.bandwidth_gb_s * 1e9 / decode_bytes_per_token(cfg, depth)
    if dev.type == "cuda":
        result.peak_memory_bytes = torch.cuda.max_memory_allocated(dev)
    if off:
        result.offload = offload_summary(off, moved)
    return result


def offload_summary(off: ExpertOffload, moved: dict[str, int]) -> dict:
    """Per decode token: PCIe bytes, CPU-computed experts (the staging path) and expert bytes the CPU read (the
    in-graph share), cache hit rate; plus the measured costs, the share's split and its team's rate timed at load."""
    n = max(moved["tokens"], 1)
    routed = moved["hits"] + moved["misses"]
    return {"layers": len(off.layers), "cache_slots": off.capacity,
            "pcie_bytes_per_token": moved["bytes_from_host"] / n, "cpu_experts_per_token": moved["cpu_experts"] / n,
            "cpu_bytes_per_token": moved["cpu_bytes"] / n,
            "cpu_share_split": off.share.exchange.split if off.share else None,
            "cpu_share_gb_s": off.share.bytes_s / 1e9 if off.share and off.share.bytes_s else None,
            "hit_rate": moved["hits"] / routed if routed else 0.0,
            "cpu_fraction": off.cpu_fraction, "costs": off.costs.to_dict() if off.costs else None}
