"""The pipelined decode loop on CUDA graphs against the step-by-step one, at the real 20b shape (random weights).

    python benchmarks/gpu_decode_loop.py [--out DIR]

The engine's decode samples each next id inside the graph and queues the next step before reading the id back;
the stepwise loop (``Engine.step``, then sample on the host) reads every id first. On the same engine and prompt:
1. greedy ids equal over 96 tokens, and seeded temperature / top-p / top-k ids equal (same uniform stream);
2. a stop id discards the step queued after it: continuing the conversation afterwards gives logits
   bit-identical to reaching the same cache state step by step;
3. per-token time of both loops (the host round trip the pipelining removes);
4. the embedding table in RAM, as a plan for a smaller card places it (pinned; each step's first kernel reads its
   row in place): the loop still samples inside the graph, and greedy ids and logits equal those with the table
   on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gptoss_cli.engine.generator import load_random
from gptoss_cli.engine.sampling import Sampler, SamplingParams
from gptoss_cli.model.config import official_config


def stepwise(engine, prompt: list[int], n: int, **params) -> list[int]:
    """The reference loop: prefill, then read each id before stepping on it."""
    sampler = Sampler(SamplingParams(**params))
    logits = engine.prefill(prompt)
    out = []
    for i in range(n):
        out.append(sampler(logits))
        if i + 1 < n:
            logits = engine.step(out[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args()
    engine = load_random(official_config("gpt-oss-20b"), device="cuda", context_length=4096, peaked=True)
    assert engine.graphs is not None and engine.graphs.samples_inside
    prompt = torch.randint(0, 199998, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    res: dict = {"path": engine.path_name, "cases": []}
    for params in (dict(temperature=0.0), dict(temperature=1.0, seed=5), dict(temperature=0.8, top_p=0.9, seed=6),
                   dict(temperature=1.2, top_k=40, seed=7)):
        engine.reset()
        want = stepwise(engine, prompt, 96, **params)
        engine.reset()
        got = list(engine.generate(prompt, max_new_tokens=96, stop=[], **params))
        res["cases"].append({"params": params, "equal": got == want, "distinct_ids": len(set(got)),
                             "first_mismatch": next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)})
    # 2. stop, then continue
    engine.reset()
    free = list(engine.generate(prompt, max_new_tokens=40, temperature=0, stop=[]))
    stop_at = free[25]
    engine.reset()
    out = list(engine.generate(prompt, max_new_tokens=40, temperature=0, stop=[stop_at]))
    longer = prompt + out[:-1] + [(out[-1] + 1) % 199998, 11, 12, 13]
    after_stop = engine.prefill(longer).float().cpu()
    reused = engine.stats.reused_tokens
    engine.reset()
    engine.prefill(prompt)
    for t in out[:-1]:
        engine.step(t)
    stepped = engine.prefill(longer).float().cpu()
    res["stop_then_continue"] = {"stopped_after": len(out), "reused_tokens": reused,
                                 "bit_identical": bool(torch.equal(after_stop, stepped)),
                                 "max_abs_diff": (after_stop - stepped).abs().max().item()}
    # 3. time per token, greedy, 128 steps after a 300-token prompt (median of 3)
    greedy = Sampler(SamplingParams(temperature=0))
    for name in ("stepwise", "pipelined"):
        times = []
        for _ in range(3):
            engine.reset()
            logits = engine.prefill(prompt)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if name == "stepwise":
                last = greedy(logits)
                for _ in range(128):
                    last = greedy(engine.step(last))
            else:
                for _ in engine.decode(logits, greedy, 129):
                    pass
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 128)
        res[f"{name}_us_per_token"] = sorted(times)[1] * 1e6
    # 4. the same weights with the embedding table in pinned RAM
    engine.reset()
    want = list(engine.generate(prompt, max_new_tokens=96, temperature=0, stop=[]))
    engine.reset()
    engine.prefill(prompt)
    want_logits = torch.stack([engine.step(t) for t in want[:8]]).cpu()  # graph steps (the row read in the graph)
    del engine
    torch.cuda.empty_cache()
    plan = SimpleNamespace(embedding="cpu", lm_head="gpu", experts_on_gpu=range(24), attn_precision="bf16",
                           lm_head_precision="bf16", expert_cache_slots=0, context_length=4096, prefill_chunk=1024)
    in_ram = load_random(official_config("gpt-oss-20b"), device="cuda", peaked=True, plan=plan)
    table = in_ram.model.embedding
    got = list(in_ram.generate(prompt, max_new_tokens=96, temperature=0, stop=[]))
    in_ram.reset()
    in_ram.prefill(prompt)
    got_logits = torch.stack([in_ram.step(t) for t in want[:8]]).cpu()
    res["embedding_in_ram"] = {"pinned": table.is_pinned(), "samples_inside": in_ram.graphs.samples_inside,
                               "greedy_equal": got == want, "step_logits_equal": bool(torch.equal(got_logits,
                                                                                                  want_logits))}
    print(json.dumps(res, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_loop.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
