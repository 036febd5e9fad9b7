"""One offloaded MoE layer at gpt-oss-20b's shape: the GPU alone (experts read in place from pinned RAM) vs the GPU
and the CPU worker sharing each expert's columns (engine/cpu_share.py), for several splits.

    python benchmarks/probe_cpu_share.py [--fractions 0.1,0.2,0.3,0.4] [--tokens 40] [--out DIR]

Per split: the layer's output against the GPU-alone output for ``tokens`` different inputs (relative error of the
residual stream and of the MoE delta), and the time per layer: a CUDA graph of ``layers`` calls (one slot each,
like a decode step's offloaded layers), replayed, so launch overhead is what a decode step pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from gptoss_kernels import moe as moe_kernels

from gptoss_cli.engine import cpu_experts
from gptoss_cli.engine.cpu_share import CpuShare, split_for

H = I = 2880
E, K = 32, 4


def pinned_layer(seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    blocks_gu = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=gen).pin_memory()
    scales_gu = torch.randint(118, 124, (E, 2 * I, H // 32), dtype=torch.uint8, generator=gen).pin_memory()
    blocks_dn = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=gen).pin_memory()
    scales_dn = torch.randint(118, 124, (E, H, I // 32), dtype=torch.uint8, generator=gen).pin_memory()
    bias_gu = torch.randn(E, 2 * I, generator=gen).bfloat16().cuda()
    bias_dn = torch.randn(E, H, generator=gen).bfloat16().cuda()
    return blocks_gu, scales_gu, bias_gu, blocks_dn, scales_dn, bias_dn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.1,0.2,0.25,0.3,0.4")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(7)
    layers = [pinned_layer(s) for s in range(args.layers)]
    router_w = (torch.randn(E, H, generator=gen) / H**0.5).bfloat16().cuda()
    router_b = torch.randn(E, generator=gen).bfloat16().cuda()
    norm_w = (1 + 0.1 * torch.randn(H, generator=gen)).bfloat16().cuda()
    xs = torch.randn(args.tokens, 1, H, generator=gen).bfloat16().cuda()
    resid = torch.randn(1, H, generator=gen).bfloat16().cuda()
    host = {i: cpu_experts.HostExperts.from_tensors(*layer) for i, layer in enumerate(layers)}
    residual = (resid, norm_w, 1e-5)

    def gpu_alone(x: torch.Tensor, layer: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        routing = moe_kernels.router_logits(x, router_w, router_b)
        return moe_kernels.experts_decode(x, routing, *layer, K, residual=residual)

    def shared(x: torch.Tensor, layer: tuple, share: CpuShare, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        routing = moe_kernels.router_logits(x, router_w, router_b)
        return moe_kernels.experts_decode_shared(x, routing, *layer, K, 1.702, 7.0, residual, share.exchange, slot)

    def timed(step) -> float:
        """Per-layer microseconds of a graph replaying ``step`` over every layer."""
        x = xs[0].clone()
        step(x)  # warm-up (compiles)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x)
        times = []
        for _ in range(7):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times[2:]) / len(layers)

    rows = [{"mode": "gpu", "us_per_layer": timed(lambda x: [gpu_alone(x, layer) for layer in layers])}]
    print(json.dumps(rows[-1]), flush=True)
    want = [gpu_alone(xs[t], layers[t % len(layers)]) for t in range(args.tokens)]
    for fraction in (float(f) for f in args.fractions.split(",")):
        split = split_for(fraction, I)
        share = CpuShare.start(host, list(host), split, K, torch.bfloat16, torch.device("cuda"), 1.702, 7.0)
        try:
            errs_res, errs_delta = [], []
            for t in range(args.tokens):
                res, _ = shared(xs[t], layers[t % len(layers)], share, t % len(layers))
                w_res = want[t][0]
                errs_res.append(((res.float() - w_res.float()).norm() / w_res.float().norm()).item())
                errs_delta.append(((res.float() - w_res.float()).norm() / (w_res.float() - resid.float()).norm())
                                  .item())
            us = timed(lambda x: [shared(x, layer, share, i) for i, layer in enumerate(layers)])  # noqa: B023
            rows.append({"mode": "shared", "fraction": fraction, "split": split, "us_per_layer": us,
                         "max_rel_err_residual": max(errs_res), "max_rel_err_moe_delta": max(errs_delta),
                         "state": share.state()})
        finally:
            share.close()
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_cpu_share.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
