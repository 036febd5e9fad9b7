"""The Triton kernels at the full gpt-oss-20b shapes on the GPU: correctness against the torch references, then speed.

    python benchmarks/bench_kernels.py [--out DIR] [--sweep] [--budget SECONDS]

Shapes: H = I = 2880, E = 32, top-4, Hq = 64, Hkv = 8, D = 64, vocab 201,088. Weights are random (every MXFP4 byte
value, realistic scales). Each timing is the median of CUDA-graph replays (triton.testing.do_bench_cudagraph) over
several copies of the weights ("layers"), so that the bytes come from HBM, not from the 50-60 MB L2. "GB/s" counts
the bytes a kernel must read (weights, KV cache) and write once; "TFLOP/s" is reported for the compute-bound
prefill kernels. --sweep times a few launch shapes per kernel and prints the best. Results go to OUT/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing
from gptoss_kernels import attention as attn
from gptoss_kernels import gemv as gemv_kernels
from gptoss_kernels import int8 as int8_kernels
from gptoss_kernels import moe as moe_kernels
from gptoss_kernels import norm as norm_kernels

H, I, E, TOP_K = 2880, 2880, 32, 4
HQ, HKV, D = 64, 8, 64
VOCAB = 201088
DEV = "cuda"
RESULTS: dict[str, dict] = {}
START = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - START:6.1f}s] {msg}", flush=True)


def timed(fn: Callable[[], object], rep: int = 30) -> float:
    """Median ms per call of ``fn`` (CUDA graph of back-to-back calls; the first call compiles outside it)."""
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def record(name: str, ms: float, nbytes: float | None = None, flops: float | None = None, **extra: object) -> None:
    row: dict = {"ms": ms, **extra}
    text = f"{name:44s} {ms * 1e3:9.1f} us"
    if nbytes:
        row["GB/s"] = nbytes / ms / 1e6
        row["MB"] = nbytes / 1e6
        text += f"  {nbytes / 1e6:9.1f} MB  {row['GB/s']:7.0f} GB/s"
    if flops:
        row["TFLOP/s"] = flops / ms / 1e9
        text += f"  {row['TFLOP/s']:6.1f} TFLOP/s"
    if extra:
        text += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
    RESULTS[name] = row
    print(text, flush=True)


def check(name: str, out: torch.Tensor, ref: torch.Tensor, rel_tol: float) -> None:
    """max |out - ref| relative to max |ref|; fails loudly (NaN never passes)."""
    err = (out.float() - ref.float()).abs().max().item() / max(ref.float().abs().max().item(), 1e-30)
    ok = err <= rel_tol and not math.isnan(err)
    RESULTS[f"check {name}"] = {"max_rel_err": err, "tol": rel_tol, "ok": ok}
    print(f"check {name:38s} max|err|/max|ref| = {err:.2e} (tol {rel_tol:.0e}) {'ok' if ok else 'FAIL'}", flush=True)


def copy_bandwidth() -> None:
    src = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=DEV).normal_()
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    record("device copy (read + write)", ms, nbytes=2 * src.numel() * 2)


# ---------------------------------------------------------------------------------------------------------------
# MoE
# ---------------------------------------------------------------------------------------------------------------


def moe_layer(gen: torch.Generator) -> tuple:
    blocks_gu = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, device=DEV, generator=gen)
    scales_gu = torch.randint(116, 124, (E, 2 * I, H // 32), dtype=torch.uint8, device=DEV, generator=gen)
    blocks_d = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, device=DEV, generator=gen)
    scales_d = torch.randint(114, 122, (E, H, I // 32), dtype=torch.uint8, device=DEV, generator=gen)
    router_w = (torch.randn(E, H, device=DEV, generator=gen) / H**0.5).bfloat16()
    router_b = torch.randn(E, device=DEV, generator=gen).bfloat16()
    bias_gu = torch.randn(E, 2 * I, device=DEV, generator=gen).bfloat16()
    bias_d = torch.randn(E, H, device=DEV, generator=gen).bfloat16()
    return router_w, router_b, blocks_gu, scales_gu, bias_gu, blocks_d, scales_d, bias_d


def moe_decode_bytes(n_experts: int) -> tuple[float, float, float]:
    gate_up = n_experts * (2 * I * H // 2 + 2 * I * H // 32 + 2 * I * 2)
    down = n_experts * (H * I // 2 + H * I // 32 + H * 2)
    router = E * H * 2 + E * 2
    return gate_up, down, router


def bench_moe(sweep: bool, budget: float) -> None:
    gen = torch.Generator(device=DEV).manual_seed(0)
    layers = [moe_layer(gen) for _ in range(8)]
    layer_mb = sum(t.numel() * t.element_size() for t in layers[0]) / 1e6
    log(f"MoE: {len(layers)} layers of random MXFP4 experts ({layer_mb:.0f} MB each)")
    x1 = torch.randn(1, H, device=DEV, generator=gen).bfloat16()
    for T in (1, 4):
        x = torch.randn(T, H, device=DEV, generator=gen).bfloat16()
        ref = moe_kernels.moe_reference(x, *layers[0], TOP_K)
        check(f"moe_decode T={T} bf16", moe_kernels.moe_decode(x, *layers[0], TOP_K), ref, 2**-6)
    for T in (37, 512):
        x = torch.randn(T, H, device=DEV, generator=gen).bfloat16()
        ref = moe_kernels.moe_reference(x, *layers[0], TOP_K)
        check(f"moe_prefill T={T} bf16", moe_kernels.moe_prefill(x, *layers[0], TOP_K), ref, 2**-6)
    x = torch.randn(2, H, device=DEV, generator=gen)
    check("moe_decode T=2 fp32", moe_kernels.moe_decode(x, *layers[0], TOP_K),
          moe_kernels.moe_reference(x, *layers[0], TOP_K), 1e-4)

    gate_up_b, down_b, router_b = moe_decode_bytes(TOP_K)

    def decode_all() -> None:
        for layer in layers:
            moe_kernels.moe_decode(x1, *layer, TOP_K)

    ms = timed(decode_all) / len(layers)
    record("moe_decode T=1 (3 kernels) per layer", ms, nbytes=gate_up_b + down_b + router_b,
           cfg=json.dumps(moe_kernels.DECODE_CONFIG))
    f16x2 = moe_kernels._f16x2
    moe_kernels._f16x2 = lambda dtype: False  # the exact fp32 GEMVs on the same bf16 activations, for comparison
    try:
        record("moe_decode T=1 per layer, fp32 GEMVs", timed(decode_all) / len(layers),
               nbytes=gate_up_b + down_b + router_b)
    finally:
        moe_kernels._f16x2 = f16x2
    if sweep:
        sweep_moe_decode(layers, x1, budget)
    bench_moe_kernels(layers, x1)

    for T in (512, 2048):
        xt = torch.randn(T, H, device=DEV, generator=gen).bfloat16()
        flops = 2 * T * TOP_K * (2 * I * H + H * I)
        def prefill(xt: torch.Tensor = xt) -> None:
            for layer in layers[:4]:
                moe_kernels.moe_prefill(xt, *layer, TOP_K)

        ms = timed(prefill) / 4
        record(f"moe_prefill T={T} per layer", ms, flops=flops, cfg=json.dumps(moe_kernels.PREFILL_CONFIG))
        if sweep and time.time() - START < budget:
            base = dict(moe_kernels.PREFILL_CONFIG)
            best = (ms, base)
            for cfg in ({"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
                        {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
                        {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 5},
                        {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}):
                moe_kernels.PREFILL_CONFIG.clear()
                moe_kernels.PREFILL_CONFIG.update(cfg)
                try:
                    ms_c = timed(prefill) / 4
                except Exception as exc:  # noqa: BLE001 - a shape that does not fit (shared memory) is no candidate
                    log(f"  prefill cfg {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                record(f"  moe_prefill T={T} sweep", ms_c, flops=flops, cfg=json.dumps(cfg))
                best = min(best, (ms_c, cfg), key=lambda b: b[0])
            moe_kernels.PREFILL_CONFIG.clear()
            moe_kernels.PREFILL_CONFIG.update(base)
            RESULTS[f"best moe_prefill T={T}"] = {"ms": best[0], "cfg": best[1]}
            log(f"best moe_prefill T={T}: {best}")


def sweep_moe_decode(layers: list, x1: torch.Tensor, budget: float) -> None:
    gate_up_b, down_b, router_b = moe_decode_bytes(TOP_K)
    base = {k: dict(v) for k, v in moe_kernels.DECODE_CONFIG.items()}
    candidates = {
        # the fp16x2 gate_up GEMV packs whole 8-column words of h: BLOCK_N a multiple of 16
        "gate_up": [(16, 16, 4), (16, 8, 4), (16, 16, 2), (32, 8, 4), (16, 32, 4)],
        "down": [(8, 16, 4), (16, 8, 4), (4, 16, 4), (4, 8, 2), (8, 4, 4), (16, 4, 4)],
    }
    for kernel, cands in candidates.items():
        best = None
        for bn, bg, nw in cands:
            if time.time() - START > budget:
                log("budget spent: stopping the decode sweep")
                break
            moe_kernels.DECODE_CONFIG[kernel] = dict(BLOCK_N=bn, BLOCK_G=bg, num_warps=nw)
            ms = timed(lambda: [moe_kernels.moe_decode(x1, *layer, TOP_K) for layer in layers]) / len(layers)
            record(f"  moe_decode sweep {kernel} {bn}x{bg} w{nw}", ms, nbytes=gate_up_b + down_b + router_b)
            if best is None or ms < best[0]:
                best = (ms, dict(moe_kernels.DECODE_CONFIG[kernel]))
        if best is not None:
            moe_kernels.DECODE_CONFIG[kernel] = best[1]  # keep the winner while sweeping the other kernel
            RESULTS[f"best moe_decode {kernel}"] = {"ms": best[0], "cfg": best[1]}
            log(f"best {kernel}: {best}")
    RESULTS["moe_decode base config"] = base


def bench_moe_kernels(layers: list, x1: torch.Tensor) -> None:
    """Each decode kernel alone, through the same launch helpers moe_decode uses, with the current configs."""
    gate_up_b, down_b, router_b = moe_decode_bytes(TOP_K)
    routing = moe_kernels.router_logits(x1, *layers[0][:2])
    ids, wts, h = moe_kernels.gate_up_decode(x1, routing, *layers[0][2:5], TOP_K, 1.702, 7.0)
    out = torch.empty_like(x1)

    def router() -> None:
        for layer in layers:
            moe_kernels.router_logits(x1, *layer[:2])

    def gate_up() -> None:
        for layer in layers:
            moe_kernels.gate_up_decode(x1, routing, *layer[2:5], TOP_K, 1.702, 7.0)

    def down() -> None:
        for layer in layers:
            moe_kernels.down_decode(h, ids, wts, *layer[5:8], TOP_K, 7.0, out)

    for name, fn, nbytes in (("router logits", router, router_b), ("gate_up+swiglu GEMV", gate_up, gate_up_b),
                             ("down GEMV (sum over k)", down, down_b)):
        record(f"  moe_decode kernel: {name}", timed(fn) / len(layers), nbytes=nbytes,
               cfg=json.dumps(moe_kernels.DECODE_CONFIG.get(name.split("+")[0].split(" ")[0], "")))


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def bench_attention(sweep: bool, budget: float) -> None:
    gen = torch.Generator(device=DEV).manual_seed(1)
    sinks = torch.randn(HQ, device=DEV, generator=gen).bfloat16()
    scale = 0.125
    for S, window, copies in ((129, 128, 64), (4096, None, 16), (32768, None, 4)):
        q = torch.randn(1, HQ, D, device=DEV, generator=gen).bfloat16()
        caches = [(torch.randn(S, HKV, D, device=DEV, generator=gen).bfloat16(),
                   torch.randn(S, HKV, D, device=DEV, generator=gen).bfloat16()) for _ in range(copies)]
        if window:  # a ring: the 128 previous tokens in rotated order, then the new one
            k_pos = torch.cat(((torch.arange(128, device=DEV) + 37) % 128 + 1000, torch.tensor([1128], device=DEV)))
        else:
            k_pos = torch.arange(S, device=DEV)
        q_pos = k_pos.max().view(1)
        k, v = caches[0]
        check(f"attention_decode S={S}", attn.attention_decode(q, k, v, sinks, q_pos, k_pos, scale, window),
              attn.attention_reference(q, k, v, sinks, q_pos, k_pos, scale, window), 2**-6)
        nbytes = 2 * S * HKV * D * 2 + S * 8

        def run(caches: list = caches, q: torch.Tensor = q, q_pos: torch.Tensor = q_pos, k_pos: torch.Tensor = k_pos,
                window: int | None = window) -> None:
            for k_, v_ in caches:
                attn.attention_decode(q, k_, v_, sinks, q_pos, k_pos, scale, window)

        record(f"attention_decode S={S}", timed(run) / copies, nbytes=nbytes, cfg=json.dumps(attn.DECODE_CONFIG))
        if sweep and S >= 4096 and time.time() - START < budget:
            base = dict(attn.DECODE_CONFIG)
            for kps, progs, ns in ((128, 1024, 3), (256, 1024, 3), (64, 512, 3), (64, 2048, 3), (64, 1024, 2)):
                attn.DECODE_CONFIG.update(keys_per_split=kps, max_programs=progs, num_stages=ns)
                record(f"  attention_decode S={S} sweep", timed(run) / copies, nbytes=nbytes,
                       cfg=f"kps{kps} programs{progs} st{ns}")
            attn.DECODE_CONFIG.clear()
            attn.DECODE_CONFIG.update(base)
    # A static 32k cache holding 4k tokens: the rest are future slots the kernel must skip cheaply.
    S, live = 32768, 4096
    k = torch.randn(S, HKV, D, device=DEV, generator=gen).bfloat16()
    v = torch.randn(S, HKV, D, device=DEV, generator=gen).bfloat16()
    k_pos = torch.arange(S, device=DEV)
    q = torch.randn(1, HQ, D, device=DEV, generator=gen).bfloat16()
    q_pos = torch.tensor([live - 1], device=DEV)
    record("attention_decode static 32k cache, 4k live",
           timed(lambda: attn.attention_decode(q, k, v, sinks, q_pos, k_pos, scale, None)),
           nbytes=2 * live * HKV * D * 2 + S * 8)

    T = 2048
    q = torch.randn(T, HQ, D, device=DEV, generator=gen).bfloat16()
    k = torch.randn(T, HKV, D, device=DEV, generator=gen).bfloat16()
    v = torch.randn(T, HKV, D, device=DEV, generator=gen).bfloat16()
    pos = torch.arange(T, device=DEV)
    for window in (None, 128):
        check(f"attention_prefill T={T} window={window}",
              attn.attention_prefill(q, k, v, sinks, pos, pos, scale, window),
              attn.attention_reference(q, k, v, sinks, pos, pos, scale, window), 2**-6)
        visible = T * (T + 1) / 2 if window is None else T * window
        flops = 4 * visible * D * HQ
        def prefill(window: int | None = window) -> None:
            attn.attention_prefill(q, k, v, sinks, pos, pos, scale, window)

        ms = timed(prefill)
        config = attn.prefill_config(q)
        record(f"attention_prefill T={T} window={window}", ms, flops=flops, cfg=json.dumps(config))
        if sweep and time.time() - START < budget:
            base = dict(config)
            for bm, bn, nw, ns in ((64, 64, 4, 2), (128, 64, 8, 3), (128, 32, 4, 2), (128, 128, 8, 2)):
                config.update(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns)
                ms = timed(prefill)
                record(f"  attention_prefill window={window} sweep", ms, flops=flops,
                       cfg=f"bm{bm} bn{bn} w{nw} st{ns}")
            config.clear()
            config.update(base)


# ---------------------------------------------------------------------------------------------------------------
# int8 linear, RMSNorm
# ---------------------------------------------------------------------------------------------------------------


def bench_int8(sweep: bool, budget: float) -> None:
    gen = torch.Generator(device=DEV).manual_seed(2)
    shapes = (("lm_head", VOCAB, H, 1), ("qkv", HQ * D + 2 * HKV * D, H, 24), ("o_proj", H, HQ * D, 24))
    for name, N, K, copies in shapes:
        weights = []
        for _ in range(copies):
            w = torch.randn(N, K, device=DEV, generator=gen) / K**0.5
            q, s = int8_kernels.quantize_int8(w)
            weights.append((q, s, torch.randn(N, device=DEV, generator=gen).bfloat16() if name != "lm_head" else None,
                            w.bfloat16()))
            del w
        x = torch.randn(1, K, device=DEV, generator=gen).bfloat16()
        q, s, b, wb = weights[0]
        check(f"linear_int8 {name} T=1", int8_kernels.linear_int8(x, q, s, b),
              int8_kernels.linear_int8_reference(x, q, s, b), 2**-6)
        nbytes = N * K + N * 4 + K * 2 + N * 2

        def run(weights: list = weights, x: torch.Tensor = x) -> None:
            for q_, s_, b_, _ in weights:
                int8_kernels.linear_int8(x, q_, s_, b_)

        def run_bf16(weights: list = weights, x: torch.Tensor = x) -> None:
            for _, _, b_, w_ in weights:
                torch.nn.functional.linear(x, w_, b_)

        def run_gemv(weights: list = weights, x: torch.Tensor = x) -> None:
            for _, _, b_, w_ in weights:
                gemv_kernels.linear(x, w_, b_)

        check(f"gemv bf16 {name} T=1", gemv_kernels.linear(x, wb, b),
              torch.nn.functional.linear(x.float(), wb.float(), None if b is None else b.float()), 2**-6)
        record(f"linear_int8 {name} T=1 [{N}x{K}]", timed(run) / copies, nbytes=nbytes)
        record(f"  torch bf16 linear {name} T=1 (cuBLAS)", timed(run_bf16) / copies, nbytes=2 * N * K)
        record(f"  triton bf16 GEMV {name} T=1", timed(run_gemv) / copies, nbytes=2 * N * K,
               cfg=json.dumps(gemv_kernels.GEMV_CONFIG_LARGE if 2 * N * K >= gemv_kernels.GEMV_LARGE_BYTES
                              else gemv_kernels.GEMV_CONFIG))
        if sweep and time.time() - START < budget:
            gcfgs = gemv_kernels.GEMV_CONFIG, gemv_kernels.GEMV_CONFIG_LARGE
            base_g = [dict(c) for c in gcfgs]
            for bn, bk, nw in ((4, 512, 4), (16, 512, 4), (8, 1024, 4), (4, 1024, 4), (16, 256, 4), (8, 256, 2),
                               (2, 1024, 2)):
                for c in gcfgs:
                    c.update(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
                record(f"  triton bf16 GEMV {name} sweep", timed(run_gemv) / copies, nbytes=2 * N * K,
                       cfg=f"{bn}x{bk} w{nw}")
            for c, saved in zip(gcfgs, base_g):
                c.clear()
                c.update(saved)
        if sweep and time.time() - START < budget:
            cfgs = int8_kernels.GEMV_CONFIG, int8_kernels.GEMV_CONFIG_SMALL, int8_kernels.GEMV_CONFIG_SMALL_EVEN
            base = [dict(c) for c in cfgs]
            for bn, bk, nw in ((32, 512, 8), (8, 1024, 4), (4, 1024, 4), (8, 512, 4), (4, 512, 2)):
                for cfg in cfgs:
                    cfg.update(BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
                record(f"  linear_int8 {name} sweep", timed(run) / copies, nbytes=nbytes, cfg=f"{bn}x{bk} w{nw}")
            for cfg, saved in zip(cfgs, base):
                cfg.clear()
                cfg.update(saved)
        if name == "qkv":
            xt = torch.randn(2048, K, device=DEV, generator=gen).bfloat16()
            check("linear_int8 qkv T=2048", int8_kernels.linear_int8(xt, q, s, b),
                  int8_kernels.linear_int8_reference(xt, q, s, b), 2**-6)
            flops = 2 * 2048 * N * K
            args = (xt, q, s, b)
            record("linear_int8 qkv T=2048", timed(lambda args=args: int8_kernels.linear_int8(*args)), flops=flops,
                   cfg=json.dumps(int8_kernels.GEMM_CONFIG))
            if sweep and time.time() - START < budget:
                base = dict(int8_kernels.GEMM_CONFIG)
                for bm, bn, bk, nw, ns in ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3)):
                    int8_kernels.GEMM_CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
                    record("  linear_int8 qkv T=2048 sweep", timed(lambda args=args: int8_kernels.linear_int8(*args)),
                           flops=flops, cfg=f"{bm}x{bn}x{bk} w{nw} st{ns}")
                int8_kernels.GEMM_CONFIG.clear()
                int8_kernels.GEMM_CONFIG.update(base)
            args = (xt, wb, b)
            record("  torch bf16 linear qkv T=2048 (cuBLAS)",
                   timed(lambda args=args: torch.nn.functional.linear(*args)), flops=flops)
        weights.clear()
        torch.cuda.empty_cache()


def bench_norm() -> None:
    gen = torch.Generator(device=DEV).manual_seed(3)
    w = torch.rand(H, device=DEV, generator=gen) + 0.5
    for T in (1, 2048):
        x = torch.randn(T, H, device=DEV, generator=gen).bfloat16()
        d = torch.randn(T, H, device=DEV, generator=gen).bfloat16()
        _, y = norm_kernels.add_rms_norm(x, d, w, 1e-5)
        check(f"add_rms_norm T={T}", y, norm_kernels.add_rms_norm_reference(x, d, w, 1e-5)[1], 2**-6)
        args = (x, d, w, 1e-5)
        record(f"add_rms_norm T={T}", timed(lambda args=args: norm_kernels.add_rms_norm(*args)), nbytes=4 * T * H * 2)
        record(f"  torch add + rms_norm T={T}",
               timed(lambda args=args: norm_kernels.add_rms_norm_reference(*args)), nbytes=4 * T * H * 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--sweep", action="store_true", help="also time a few launch shapes per kernel")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which sweeps stop")
    parser.add_argument("--only", default="copy,moe,attention,int8,norm")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs", flush=True)
    steps = {"copy": copy_bandwidth, "moe": lambda: bench_moe(args.sweep, args.budget),
             "attention": lambda: bench_attention(args.sweep, args.budget),
             "int8": lambda: bench_int8(args.sweep, args.budget), "norm": bench_norm}
    failed = []
    for name in args.only.split(","):
        log(f"== {name}")
        try:
            steps[name]()
        except Exception as exc:  # noqa: BLE001 - one broken kernel must not hide the others' numbers
            import traceback
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels.json").write_text(json.dumps(RESULTS, indent=1))
    bad = [k for k, v in RESULTS.items() if k.startswith("check") and not v["ok"]]
    log(f"done; failed steps: {failed or 'none'}; failed checks: {bad or 'none'}")
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
