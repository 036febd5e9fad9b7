"""The int8 decode GEMV at the 20b shapes (lm_head, q/k/v, o) for several launch shapes, in a CUDA graph of
back-to-back calls, with its error against the reference. With benchmarks/ab_trees.sh it compares two trees:

    bash benchmarks/ab_trees.sh .ab/old 1 python3 benchmarks/int8_gemv_shapes.py

"default" is the tree's own choice of shape; the others are forced on every GEMV config of the tree.
"""

from __future__ import annotations

import json
import os

import torch
import triton
from gptoss_kernels import int8

SHAPES = (("lm_head", 201088, 2880, 1), ("qkv", 5120, 2880, 24), ("o_proj", 2880, 4096, 24))
LAUNCH = (None, (8, 1024, 4), (16, 512, 4), (4, 1024, 4), (8, 2048, 4), (16, 1024, 4), (32, 512, 8), (8, 512, 4))


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    configs = [c for c in (getattr(int8, n, None) for n in ("GEMV_CONFIG", "GEMV_CONFIG_SMALL",
                                                            "GEMV_CONFIG_SMALL_EVEN")) if c is not None]
    saved = [dict(c) for c in configs]
    out = {}
    for name, N, K, copies in SHAPES:
        weights = []
        for _ in range(copies):  # distinct copies, so the timed loop reads HBM rather than L2
            w = torch.randn(N, K, device="cuda", generator=gen) / K**0.5
            q, s = int8.quantize_int8(w)
            weights.append((q, s, torch.randn(N, device="cuda", generator=gen).bfloat16() if name != "lm_head"
                            else None))
            del w
        x = torch.randn(1, K, device="cuda", generator=gen).bfloat16()
        want = int8.linear_int8_reference(x, *weights[0]).float()
        for launch in LAUNCH:
            for c, base in zip(configs, saved, strict=True):
                c.clear()
                c.update(base if launch is None else dict(BLOCK_N=launch[0], BLOCK_K=launch[1], num_warps=launch[2]))

            def run(weights: list = weights, x: torch.Tensor = x) -> None:
                for w in weights:
                    int8.linear_int8(x, *w)

            err = ((int8.linear_int8(x, *weights[0]).float() - want).abs().max() / want.abs().max()).item()
            torch.cuda.synchronize()
            ms = triton.testing.do_bench_cudagraph(run, rep=40, return_mode="median")
            key = f"{name} {'default' if launch is None else '%dx%d w%d' % launch}"
            out[key] = {"us": ms * 1e3 / copies, "TB/s": N * K * copies / ms / 1e9, "rel_err": err}
            print(f"{key:28s} {ms * 1e3 / copies:8.1f} us {N * K * copies / ms / 1e9:6.2f} TB/s  err {err:.1e}",
                  flush=True)
        weights.clear()
        torch.cuda.empty_cache()
    for c, base in zip(configs, saved, strict=True):
        c.clear()
        c.update(base)
    path = os.path.join(os.environ.get("OUT", "."), "int8_gemv_shapes.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
