"""Expert offload under VRAM caps (issue 9): random weights at the real shape, the plan's placement, batch 1.

    python benchmarks/gpu_offload.py [--cases 20b:4,20b:8,120b:24] [--out DIR]

For each case: plan for a GPU capped at N GiB (context 4096, as llama-bench's pp512/tg128 runs), build the model
in memory as the plan places it, cap the process at N GiB, then time prefill of 512 tokens and decode of 64 tokens
(median of 3), with the expert cache's hit rate and the bytes copied from host RAM per token. Random routing is
the pessimistic case for a cache (real models reuse experts across neighbouring tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gptoss_cli.engine.generator import load_random
from gptoss_cli.hardware import GiB, HardwareOverride, detect
from gptoss_cli.model.config import official_config
from gptoss_cli.plan import Wishes, make_plan
from gptoss_cli.sizes import tensor_sizes


def h2d_bandwidth() -> float:
    src = torch.empty(512 << 20, dtype=torch.uint8).pin_memory()
    dst = torch.empty(src.shape, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return src.nbytes / statistics.median(times[1:]) / 1e9


def run_case(name: str, cap_gib: float) -> dict:
    cfg = official_config(f"gpt-oss-{name}")
    hw = detect(HardwareOverride(vram_bytes=int(cap_gib * GiB)))
    plan = make_plan(cfg, tensor_sizes(cfg), hw, Wishes(context=4096), model=f"gpt-oss-{name}")
    assert plan.fits, plan.refusal_reason
    t0 = time.perf_counter()
    engine = load_random(cfg, device="cuda", plan=plan)
    build = time.perf_counter() - t0
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GiB / total))
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, 199998, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    prefill, decode, per_token = [], [], []
    for r in range(3):
        engine.reset()
        torch.cuda.synchronize()
        t = time.perf_counter()
        logits = engine.prefill(ids)
        int(logits.argmax())
        prefill.append(len(ids) / (time.perf_counter() - t))
        off = engine.offload
        hits0, miss0, bytes0 = (off.stats.hits, off.stats.misses, off.stats.bytes_from_host) if off else (0, 0, 0)
        last = int(logits.argmax())
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(64):
            last = int(engine.step(last).argmax())
        decode.append(64 / (time.perf_counter() - t))
        if off:
            h, m = off.stats.hits - hits0, off.stats.misses - miss0
            per_token.append(((off.stats.bytes_from_host - bytes0) / 64, h / max(h + m, 1)))
    row = {
        "model": f"gpt-oss-{name}", "cap_gib": cap_gib, "experts_on_gpu_layers": len(plan.experts_on_gpu),
        "offloaded_layers": cfg.num_hidden_layers - len(plan.experts_on_gpu),
        "expert_cache_slots": plan.expert_cache_slots, "attn": plan.attn_precision,
        "lm_head": f"{plan.lm_head}/{plan.lm_head_precision}", "path": engine.path_name,
        "build_seconds": build, "prefill512_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "decode_bytes_from_host_per_token": statistics.median(p[0] for p in per_token) if per_token else 0,
        "decode_cache_hit_rate": statistics.median(p[1] for p in per_token) if per_token else 1.0,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "plan_gpu_bytes": plan.gpu_bytes,
        "plan_est_decode_tok_s": plan.est_decode_tok_s,
    }
    print(json.dumps(row), flush=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="20b:4,20b:8,120b:24")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = {"gpu": torch.cuda.get_device_name(), "h2d_pinned_gb_s": h2d_bandwidth(), "cases": []}
    print(f"host->GPU pinned copy: {out['h2d_pinned_gb_s']:.1f} GB/s", flush=True)
    for case in args.cases.split(","):
        name, cap = case.split(":")
        out["cases"].append(run_case(name, float(cap)))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "offload.json").write_text(json.dumps(out, indent=2))
    for r in out["cases"]:
        print(f"{r['model']:<13} cap {r['cap_gib']:>4} GiB  offloaded {r['offloaded_layers']:>2} layers  "
              f"pp512 {r['prefill512_tok_s']:8.0f}  tg {r['decode_tok_s']:6.1f} tok/s  "
              f"hit {r['decode_cache_hit_rate']:.2f}  {r['decode_bytes_from_host_per_token'] / 1e6:.0f} MB/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
