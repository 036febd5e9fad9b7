"""Can the decode MoE kernels read offloaded experts straight from pinned host RAM (zero-copy over PCIe), and how
fast? Times experts_decode per layer with the MXFP4 blocks/scales on the GPU and in pinned RAM, and a pinned-RAM ->
GPU copy of the same bytes for comparison; checks both give identical outputs.

    python benchmarks/probe_zero_copy.py [--layers 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from bench_kernels import E, H, I, TOP_K, moe_layer
from gptoss_kernels import moe as moe_kernels


def per_call_ms(fn, layers: int, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(layers):
            fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / layers)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    dev_layers = [moe_layer(gen) for _ in range(args.layers)]
    host_layers = []
    for rw, rb, bgu, sgu, bias_gu, bd, sd, bias_d in dev_layers:
        pin = [t.cpu().pin_memory() for t in (bgu, sgu, bd, sd)]
        host_layers.append((rw, rb, pin[0], pin[1], bias_gu, pin[2], pin[3], bias_d))
    x = torch.randn(1, H, device="cuda", generator=gen).bfloat16()
    routings = [moe_kernels.router_logits(x, L[0], L[1]) for L in dev_layers]

    def run(layers):
        return lambda i: moe_kernels.experts_decode(x, routings[i], *layers[i][2:], TOP_K)

    out_dev = run(dev_layers)(0)
    out_host = run(host_layers)(0)
    torch.cuda.synchronize()
    same = bool(torch.equal(out_dev, out_host))
    ids = torch.topk(routings[0][0][0], TOP_K).indices.tolist()
    expert_bytes = sum(t[0].nbytes for t in host_layers[0][2:4]) + sum(t[0].nbytes for t in host_layers[0][5:7])
    layer_bytes = TOP_K * expert_bytes
    res = {"identical": same, "experts": ids, "layer_bytes": layer_bytes}
    res["device_ms"] = per_call_ms(run(dev_layers), args.layers)
    res["zero_copy_ms"] = per_call_ms(run(host_layers), args.layers)
    staging = [torch.empty_like(t[0]).cuda() for t in host_layers[0][2:4] + host_layers[0][5:7]]

    def copy_in(i):
        srcs = host_layers[i][2:4] + host_layers[i][5:7]
        for e in ids:
            for dst, src in zip(staging, srcs):
                dst.copy_(src[e], non_blocking=True)

    res["memcpy_ms"] = per_call_ms(copy_in, args.layers)
    for k in ("device", "zero_copy", "memcpy"):
        res[f"{k}_gb_s"] = layer_bytes / res[f"{k}_ms"] / 1e6
    print(json.dumps(res, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zero_copy.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
