"""Plans under VRAM caps on a big GPU (issue 5): load a random 20b-shape checkpoint as the plan says with the
process capped at N GB (torch's per-process memory fraction), generate, and compare peak memory with the plan.

    python benchmarks/gpu_plan_caps.py --model-dir DIR --cap 12 [--out DIR]

Writes the checkpoint to --model-dir first if it is not there. One cap per process: the allocator's cap and
peak statistics are per process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import gptoss_cli
from gptoss_cli.hardware import GiB, HardwareOverride, detect
from gptoss_cli.model.random_weights import config_dict, write_checkpoint
from gptoss_cli.plan import Wishes, plan_for


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--cap", type=float, required=True, help="VRAM cap in GiB")
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not (args.model_dir / "model.safetensors.index.json").is_file():
        write_checkpoint(args.model_dir, config_dict(), seed=0, shards=9, device="cuda")
        torch.cuda.empty_cache()
    cap = int(args.cap * GiB)
    total = torch.cuda.get_device_properties(0).total_memory
    hw = detect(HardwareOverride(vram_bytes=cap))
    plan = plan_for(str(args.model_dir), hw, Wishes(context=args.context))
    print(f"plan: fits={plan.fits} ctx={plan.context_length} experts_on_gpu={len(plan.experts_on_gpu)} "
          f"attn={plan.attn_precision} lm_head={plan.lm_head}/{plan.lm_head_precision} "
          f"embedding={plan.embedding} gpu_bytes={plan.gpu_bytes / GiB:.2f} GiB", flush=True)
    for note in plan.notes:
        print("  note:", note)
    if not plan.fits:
        print("refused:", plan.refusal_reason)
        return 1
    torch.cuda.set_per_process_memory_fraction(cap / total)
    torch.cuda.reset_peak_memory_stats()
    engine = gptoss_cli.load(args.model_dir, device="cuda", plan=plan)
    load_peak = torch.cuda.max_memory_allocated()
    ids = torch.randint(0, 199998, (1024,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    out = list(engine.generate(ids, max_new_tokens=64, temperature=0, stop=[]))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    row = {
        "cap_gib": args.cap, "context_length": plan.context_length, "experts_on_gpu": len(plan.experts_on_gpu),
        "attn_precision": plan.attn_precision, "lm_head": f"{plan.lm_head}/{plan.lm_head_precision}",
        "embedding": plan.embedding, "plan_gpu_bytes": plan.gpu_bytes, "load_peak_bytes": load_peak,
        "peak_bytes": torch.cuda.max_memory_allocated(), "reserved_peak_bytes": torch.cuda.max_memory_reserved(),
        "peak_over_plan": torch.cuda.max_memory_allocated() / plan.gpu_bytes, "generated": len(out),
        "prefill_tok_s": engine.stats.prefill_tokens_per_second, "decode_tok_s": engine.stats.decode_tokens_per_second,
        "plan_est_decode_tok_s": plan.est_decode_tok_s, "path": engine.path_name, "seconds": elapsed,
    }
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"cap_{args.cap:g}.json").write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
