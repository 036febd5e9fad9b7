"""Where a decode token's time goes: graph-replayed step time, then each kernel's share (torch.profiler).

    python benchmarks/profile_decode.py [--int8] [--depth 512] [--out DIR]

Random weights at the 20b shape on the fast path. The step is timed as the engine runs it (CUDA-graph replay);
the kernel table comes from the same step body run eagerly under the profiler (same kernels, launch gaps open),
so "sum of kernels" vs "graph step" shows what the gaps between kernels still cost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gptoss_cli.engine.generator import load_random
from gptoss_cli.model.config import official_config


def pdl_is_race_free(engine, ids: list[int]) -> dict:
    """Decode logits with programmatic dependent launch on and off must be bit-identical (same kernels, same
    math; only the overlap of launches differs). A missing wait would show as a difference or a NaN."""
    from gptoss_kernels import pdl

    def run() -> torch.Tensor:
        engine.reset()
        engine.prefill(ids[:256])
        rows = torch.stack([engine.step(t) for t in ids[256:288]])
        torch.cuda.synchronize()
        return rows

    from gptoss_cli.engine.graphs import DecodeGraphs

    with_pdl = run()
    enabled = pdl.enabled
    pdl.enabled = lambda t: False
    # fresh graphs (and pool): clearing captured graphs while keeping their pool handle trips a PyTorch assert
    engine.graphs = DecodeGraphs(engine.model, engine.cache)
    try:
        without = run()
    finally:
        pdl.enabled = enabled
        engine.graphs = DecodeGraphs(engine.model, engine.cache)
    diff = (with_pdl - without).abs().max().item()
    return {"pdl_on": enabled(with_pdl), "max_abs_diff_pdl_on_vs_off": diff,
            "finite": bool(torch.isfinite(with_pdl).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="int8 attention and lm_head (the plan's option)")
    parser.add_argument("--depth", type=int, default=512, help="tokens in the cache before the timed steps")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    cfg = official_config("gpt-oss-20b")
    engine = load_random(cfg, device="cuda", context_length=max(4096, 2 * args.depth), int8=args.int8)
    assert engine.graphs is not None, engine.notes
    ids = torch.randint(0, 199998, (args.depth,), generator=torch.Generator().manual_seed(0)).tolist()
    engine.prefill(ids)
    for t in ids[:8]:
        engine.step(t)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for t in ids[:args.steps]:
        engine.step(t)
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3

    graphs = engine.graphs
    position = engine.cache.length
    from gptoss_cli.engine.graphs import kv_bucket
    kv_len = kv_bucket(position + 1, engine.cache.context_length)
    graphs.pos.fill_(position)
    graphs.pos_now = None  # set behind the graphs' back: the next step must fill it again
    reps = 8
    with torch.inference_mode():
        graphs._body(kv_len, None)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                graphs._body(kv_len, None)
            torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.key_averages():
        if ev.device_type.name != "CUDA" or ev.device_time_total <= 0:
            continue
        row = per_kernel[ev.key[:90]]
        row[0] += ev.device_time_total / reps
        row[1] += ev.count / reps
    total = sum(v[0] for v in per_kernel.values())
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])
    print(f"graph step {step_ms * 1e3:.0f} us ({1e3 / step_ms:.1f} tok/s) at depth {position}; "
          f"sum of kernel times {total:.0f} us over {sum(v[1] for v in per_kernel.values()):.0f} launches")
    for name, (us, n) in rows[:24]:
        print(f"{us:8.1f} us {n:6.0f}x  {us / total * 100:5.1f}%  {name}")
    race = pdl_is_race_free(engine, ids)
    print(f"PDL race check: {race}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_decode{'_int8' if args.int8 else ''}.json").write_text(json.dumps(
        {"step_us": step_ms * 1e3, "kernel_sum_us": total, "depth": position, "pdl_check": race,
         "kernels": [{"name": k, "us": v[0], "count": v[1]} for k, v in rows]}, indent=1))


if __name__ == "__main__":
    main()
