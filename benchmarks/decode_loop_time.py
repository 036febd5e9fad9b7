"""A greedy decode token's time in the engine's loop against the graph step alone, and the kernels at its edges.

    python benchmarks/decode_loop_time.py [--int8] [--tokens 128] [--repeats 7] [--publish-blocks 2048,8192] [--out DIR]

Random weights at the 20b shape on the fast path, one token of prompt (depth 0, as `gptoss bench`'s tg row):
1. ``loop``: ``run_bench``'s decode row (the engine's own greedy loop: each step samples inside its graph, the
   host reads the id while the next step runs), tok/s, median of repeats;
2. ``replay``: the same sampling graph replayed back to back with no id read (what the loop adds is the rest);
3. the kernels of one sampling step run eagerly under torch.profiler: the first and last few (the step's prologue
   and the sampling epilogue the loop's overhead sits in), with their times;
4. with ``--publish-blocks``: the replay rate for each launch shape of the greedy publish kernel
   (gptoss_kernels.sample.BLOCK), graphs recaptured for each, alternating over two rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gptoss_cli.engine.bench import run_bench
from gptoss_cli.engine.generator import load_random
from gptoss_cli.engine.graphs import DecodeGraphs, kv_bucket
from gptoss_cli.engine.sampling import Sampler, SamplingParams
from gptoss_cli.model.config import official_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int8", action="store_true", help="int8 attention and lm_head (the plan's option)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--publish-blocks", default="", help="comma-separated launch shapes of the greedy publish kernel")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args()
    engine = load_random(official_config("gpt-oss-20b"), device="cuda", context_length=4096, int8=args.int8)
    assert engine.graphs is not None and engine.graphs.samples_inside, engine.notes
    loop = run_bench(engine, "20b", [], [0], decode_tokens=args.tokens, repeats=args.repeats).decode_tok_s[0]
    greedy = Sampler(SamplingParams(temperature=0))
    replay = replay_runs(engine, greedy, args.tokens, args.repeats)
    replay_tok_s = statistics.median(replay)
    sweep: dict[int, list[float]] = {}
    if args.publish_blocks:
        from gptoss_kernels import sample

        default = sample.BLOCK
        for _ in range(2):
            for block in (int(b) for b in args.publish_blocks.split(",")):
                sample.BLOCK = block
                engine.graphs = DecodeGraphs(engine.model, engine.cache)  # recaptured with this shape
                sweep.setdefault(block, []).extend(replay_runs(engine, greedy, args.tokens, args.repeats))
        sample.BLOCK = default
        engine.graphs = DecodeGraphs(engine.model, engine.cache)
    graphs = engine.graphs
    start = engine.cache.length

    kv_len = kv_bucket(start + 2, engine.cache.context_length)
    with torch.inference_mode():
        graphs._body(kv_len, greedy)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            graphs._body(kv_len, greedy)
            torch.cuda.synchronize()
    kernels = [(e.name[:70], e.device_time_total) for e in prof.events()
               if e.device_type.name == "CUDA" and e.device_time_total > 0]
    edges = kernels[:4] + kernels[-4:]
    print(f"loop {loop:.1f} tok/s ({1e6 / loop:.0f} us), replay {replay_tok_s:.1f} tok/s ({1e6 / replay_tok_s:.0f} us);"
          f" the loop adds {1e6 / loop - 1e6 / replay_tok_s:.1f} us a token")
    for name, us in edges:
        print(f"{us:8.2f} us  {name}")
    for block, runs in sweep.items():
        print(f"publish BLOCK {block}: replay {statistics.median(runs):.1f} tok/s ({len(runs)} runs)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"decode_loop_time{'_int8' if args.int8 else ''}.json").write_text(json.dumps(
        {"loop_tok_s": loop, "replay_tok_s": replay_tok_s, "replay_runs": replay,
         "edge_kernels": [{"name": n, "us": us} for n, us in edges],
         "publish_block_replay_tok_s": {b: statistics.median(r) for b, r in sweep.items()}}, indent=1))


def replay_runs(engine, sampler: Sampler, tokens: int, repeats: int) -> list[float]:
    """tok/s of ``tokens`` sampling graph steps replayed back to back (the id never read), one value a repeat."""
    graphs = engine.graphs
    runs = []
    for _ in range(repeats):
        engine.reset()
        engine.prefill([17])
        start = engine.cache.length
        graphs.step(3, start, sampler)  # the id goes in once; every later step reads the one the last sampled
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(1, tokens + 1):
            graphs.step(None, start + i, sampler)
        torch.cuda.synchronize()
        runs.append(tokens / (time.perf_counter() - t0))
    return runs


if __name__ == "__main__":
    main()
