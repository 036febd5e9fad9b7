"""Decode launch shapes (MoE GEMVs, int8 GEMVs), timed where they count: the CUDA-graph decode step of a random
20b model.

    python benchmarks/decode_configs.py [--int8] [--steps 64] [--out DIR]

Kernel-level sweeps (bench_kernels.py --sweep) time kernels back to back; in the decode step each kernel overlaps
its neighbours (programmatic dependent launch), so a shape that wins alone can lose there. For each candidate this
recaptures the decode graphs and times the step, alternating with the default shapes so a drift of the machine
shows. ``maxnreg`` caps registers so more programs fit on an SM; the MoE gate_up's ``expert_slices`` splits each
token's k experts over that many programs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from gptoss_cli.engine.generator import load_random
from gptoss_cli.engine.graphs import DecodeGraphs
from gptoss_cli.model.config import official_config

# (kernel module, config dict name, key inside it or None) -> candidate shapes; each is timed with the others at
# their defaults
CANDIDATES: dict[tuple[str, str, str | None], list[dict]] = {
    ("moe", "DECODE_CONFIG", "gate_up"): [
        {"BLOCK_N": 16, "BLOCK_G": 16, "num_warps": 2, "expert_slices": 2},
    ],
    ("moe", "DECODE_CONFIG", "down"): [
        {"BLOCK_N": 8, "BLOCK_G": 16, "num_warps": 4},
        {"BLOCK_N": 4, "BLOCK_G": 16, "num_warps": 2},
        {"BLOCK_N": 2, "BLOCK_G": 16, "num_warps": 4},
    ],
    ("int8", "GEMV_CONFIG", None): [  # lm_head
        {"BLOCK_N": 16, "BLOCK_K": 1024, "num_warps": 4},
        {"BLOCK_N": 32, "BLOCK_K": 512, "num_warps": 4},
        {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4},
        {"BLOCK_N": 16, "BLOCK_K": 512, "num_warps": 8},
    ],
    ("int8", "GEMV_CONFIG_SMALL", None): [  # q/k/v (K = 2,880)
        {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4},
        {"BLOCK_N": 16, "BLOCK_K": 1024, "num_warps": 4},
        {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4},
        {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 2},
    ],
    ("int8", "GEMV_CONFIG_SMALL_EVEN", None): [  # o (K = 4,096)
        {"BLOCK_N": 4, "BLOCK_K": 2048, "num_warps": 4},
        {"BLOCK_N": 16, "BLOCK_K": 2048, "num_warps": 4},
        {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="int8 attention and lm_head (the plan's option)")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--depth", type=int, default=512)
    parser.add_argument("--only", default="", help="sweep only the configs whose name contains this")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    from gptoss_kernels import int8, moe

    modules = {"moe": moe, "int8": int8}
    engine = load_random(official_config("gpt-oss-20b"), device="cuda", context_length=4096, int8=args.int8)
    ids = torch.randint(0, 199998, (args.depth + args.steps + 16,), generator=torch.Generator().manual_seed(0)).tolist()

    def slot(where: tuple[str, str, str | None]) -> dict:
        module, name, key = where
        table = getattr(modules[module], name)
        return table[key] if key is not None else table

    def step_us() -> float:
        engine.graphs = DecodeGraphs(engine.model, engine.cache)
        engine.reset()
        engine.prefill(ids[:args.depth])
        for t in ids[args.depth:args.depth + 8]:
            engine.step(t)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for t in ids[args.depth + 8:args.depth + 8 + args.steps]:
            engine.step(t)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e6

    rows = []
    for where, shapes in CANDIDATES.items():
        label = ".".join(w for w in where if w)
        if args.only not in label:
            continue
        table = slot(where)
        default = dict(table)
        for shape in shapes:
            try:
                table.clear()
                table.update(shape)
                us = step_us()
            except Exception as exc:  # noqa: BLE001 - a shape that does not compile or fit is no candidate
                print(f"{label} {shape}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            finally:
                table.clear()
                table.update(default)
            ref = step_us()
            rows.append({"config": label, "shape": shape, "step_us": us, "default_step_us": ref, "default": default})
            print(f"step {us:7.1f} us (default {ref:7.1f}, {us / ref - 1:+.1%})  {label} {shape}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"decode_configs{'_int8' if args.int8 else ''}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
