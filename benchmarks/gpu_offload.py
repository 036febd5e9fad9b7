"""Expert offload under VRAM caps (issue 9): random weights at the real shape, the plan's placement, batch 1.

    python benchmarks/gpu_offload.py [--cases 20b:4,20b:8,120b:24] [--modes gpu,default] [--check 20b:8[:MODE]]
                                     [--out DIR]
    python benchmarks/gpu_offload.py --smoke      # a tiny model on the CPU: checks the script's code paths

For each case and mode: plan for a GPU capped at N GiB (context 4096, as llama-bench's pp512/tg128 runs), build the
model in memory as the plan places it with GPTOSS_CPU_EXPERTS set to the mode (as a user would), cap the process at
N GiB, then time prefill of 512 tokens and decode of 64 tokens (median of 3 each), with the expert cache's hit
rate, the bytes read from host RAM over PCIe and by the CPU per token. Modes: ``gpu`` (GPTOSS_CPU_EXPERTS=0) the GPU
reads every routed expert in place; ``default`` (unset, what a user gets; ``auto`` is the same for in-place decode)
the CPU computes the share of each expert where the team's rate, timed at load, and the PCIe rate balance
(engine/cpu_share.py, inside the CUDA graph); a number forces that share. ``--check`` compares an offloaded engine's
logits with an all-resident one's (peaked random model). Random routing is the pessimistic case for a cache (real
models reuse experts across neighbouring tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gptoss_cli.cli import use_expandable_segments
from gptoss_cli.engine import cpu_experts
from gptoss_cli.engine.generator import load_random
from gptoss_cli.engine.offload import measure_costs, measure_h2d, with_offload
from gptoss_cli.engine.sampling import Sampler, SamplingParams
from gptoss_cli.hardware import GiB, HardwareOverride, detect
from gptoss_cli.model.config import GptOssConfig, official_config
from gptoss_cli.model.random_weights import tiny_config_dict
from gptoss_cli.plan import Wishes, make_plan
from gptoss_cli.settings import CPU_EXPERTS_ENV
from gptoss_cli.sizes import tensor_sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, cap_gib: float, smoke: bool, mode: str = "gpu", peaked: bool = False) -> tuple:
    """The engine as the plan places it (on CUDA), or a tiny CPU model with two offloaded layers (smoke). ``mode``
    goes to GPTOSS_CPU_EXPERTS before the load, as a user would set it: the CPU share is set up with the engine."""
    os.environ.pop(CPU_EXPERTS_ENV, None)
    if mode != "default":
        os.environ[CPU_EXPERTS_ENV] = "0" if mode == "gpu" else mode
    if smoke:
        cfg = GptOssConfig.from_dict(tiny_config_dict())
        engine = load_random(cfg, device="cpu", dtype=torch.float32, context_length=1024)
        layers = [0, 2]
        fraction = 0.0 if mode == "gpu" else (None if mode in ("auto", "default") else float(mode))
        engine.offload = with_offload(engine.model, 3, layers, cpu_fraction=fraction,
                                      costs=measure_costs("cpu", cfg.hidden_size, cfg.intermediate_size))
        plan = SimpleNamespace(experts_on_gpu=(1,), expert_cache_slots=3, attn_precision="fp32",
                               lm_head="cpu", lm_head_precision="fp32", gpu_bytes=0, est_decode_tok_s=0.0)
        return cfg, plan, engine
    cfg = official_config(f"gpt-oss-{name}")
    hw = detect(HardwareOverride(vram_bytes=int(cap_gib * GiB)))
    plan = make_plan(cfg, tensor_sizes(cfg), hw, Wishes(context=4096), model=f"gpt-oss-{name}")
    assert plan.fits, plan.refusal_reason
    return cfg, plan, load_random(cfg, device="cuda", plan=plan, peaked=peaked)


def run_mode(name: str, cap_gib: float, mode: str, smoke: bool, tokens: int, prompt: int) -> tuple[dict, dict]:
    """Build the engine for one mode, then time prefill (median of 3) and decode of ``tokens`` (median of 3)."""
    t0 = time.perf_counter()
    cfg, plan, engine = build(name, cap_gib, smoke, mode)
    build_s = time.perf_counter() - t0
    dev = engine.device
    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GiB / total))
        torch.cuda.reset_peak_memory_stats()
    off = engine.offload
    ids = torch.randint(0, min(cfg.vocab_size, 199998), (prompt,),
                        generator=torch.Generator().manual_seed(0)).tolist()
    info = {
        "model": "tiny (smoke, CPU)" if smoke else f"gpt-oss-{name}", "cap_gib": cap_gib,
        "experts_on_gpu_layers": len(plan.experts_on_gpu), "offloaded_layers": len(off.layers) if off else 0,
        "expert_cache_slots": plan.expert_cache_slots, "attn": plan.attn_precision,
        "lm_head": f"{plan.lm_head}/{plan.lm_head_precision}", "decode_in_place": bool(off and off.in_place),
        "plan_gpu_bytes": plan.gpu_bytes, "plan_est_decode_tok_s": plan.est_decode_tok_s,
    }
    greedy = Sampler(SamplingParams(temperature=0))
    prefill, decode, per_token = [], [], []
    share = off.share if off else None
    if share is not None:
        print(json.dumps({"case": f"{name}:{cap_gib}", "mode": mode, "share": share.state()}), flush=True)
        watchdog = threading.Thread(target=_watch, args=(share,), daemon=True)
        watchdog.start()
    for _ in range(3):
        engine.reset()
        sync(dev)
        t = time.perf_counter()
        logits = engine.prefill(ids)
        int(logits.argmax())
        prefill.append(len(ids) / (time.perf_counter() - t))
        s0 = SimpleNamespace(**vars(off.stats)) if off else None
        sync(dev)
        t = time.perf_counter()
        for _ in engine.decode(logits, greedy, tokens + 1):  # the engine's own loop: `tokens` steps
            pass
        decode.append(tokens / (time.perf_counter() - t))
        if off:
            d = {k: getattr(off.stats, k) - getattr(s0, k) for k in vars(s0)}
            routed = d["hits"] + d["misses"]
            per_token.append({"bytes_from_host": d["bytes_from_host"] / tokens, "cpu_bytes": d["cpu_bytes"] / tokens,
                              "cpu_experts": d["cpu_experts"] / tokens, "misses": d["misses"] / tokens,
                              "hit_rate": d["hits"] / max(routed, 1),
                              "cpu_ms": 1e3 * d["cpu_seconds"] / tokens,
                              "cpu_wait_ms": 1e3 * d["cpu_wait_seconds"] / tokens})
    med = {k: statistics.median(p[k] for p in per_token) for k in per_token[0]} if per_token else {}
    result = {"decode_tok_s": statistics.median(decode), "prefill512_tok_s": statistics.median(prefill),
              "graphs": engine.graphs is not None, "build_seconds": build_s,
              "cpu_share_split": share.exchange.split if share else None,
              "cpu_share_error": share.error if share else None,
              "cpu_share_gb_s": share.bytes_s / 1e9 if share and share.bytes_s else None,
              "notes": list(off.notes) if off else [],
              "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
              **{f"decode_{k}_per_token" if k != "hit_rate" else "decode_cache_hit_rate": v for k, v in med.items()}}
    if off:
        off.close()
    del engine, off
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
    return info, result


def _watch(share) -> None:
    """Print the CPU share's hand-off state every 20 s while it runs (a stalled worker shows up in the log)."""
    while share.alive:
        time.sleep(20)
        print(json.dumps({"watch": share.state()}), flush=True)


def run_case(name: str, cap_gib: float, modes: list[str], smoke: bool, tokens: int, prompt: int) -> dict:
    row: dict = {"modes": {}}
    for mode in modes:
        info, result = run_mode(name, cap_gib, mode, smoke, tokens, prompt)
        row = {**info, **row}
        row["modes"][mode] = result
        print(json.dumps({"case": f"{name}:{cap_gib}", "mode": mode, **result}), flush=True)
    row["prefill512_tok_s"] = row["modes"][modes[0]]["prefill512_tok_s"]
    return row


def check_case(name: str, cap_gib: float, mode: str = "gpu", prompt: int = 256, steps: int = 32) -> dict:
    """Offloaded vs all-resident logits at the real shape, same random weights and the plan's precisions: a prefill
    of ``prompt`` tokens (experts staged) then ``steps`` teacher-forced decode steps (experts read in place from RAM
    inside the CUDA graph). Mode gpu: same kernels on the same bytes, so the logits should be bit-identical; with a
    CPU share the worker sums its columns in another order (fp32), so close, not equal: the peaked random model
    (confident predictions, like a trained one) makes top-1 agreement meaningful, where the plain one flips its
    top-1 on any rounding difference."""
    cfg, plan, engine = build(name, cap_gib, False, mode, peaked=True)
    ids = torch.randint(0, 199998, (prompt + steps,), generator=torch.Generator().manual_seed(1)).tolist()

    def run(eng) -> torch.Tensor:
        rows = [eng.prefill(ids[:prompt])]
        rows += [eng.step(t) for t in ids[prompt:prompt + steps - 1]]
        return torch.stack(rows).float().cpu()

    path_offloaded = engine.path_name
    got = run(engine)
    split = engine.offload.share.exchange.split if engine.offload and engine.offload.share else None
    if engine.offload:
        engine.offload.close()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    resident_plan = SimpleNamespace(experts_on_gpu=tuple(range(cfg.num_hidden_layers)), embedding="gpu",
                                    lm_head="gpu", attn_precision=plan.attn_precision,
                                    lm_head_precision=plan.lm_head_precision, expert_cache_slots=0,
                                    context_length=plan.context_length, prefill_chunk=plan.prefill_chunk)
    resident = load_random(cfg, device="cuda", plan=resident_plan, peaked=True)
    path_resident = resident.path_name
    want = run(resident)
    del resident
    gc.collect()
    torch.cuda.empty_cache()
    diff = (got - want).abs()
    row = {"model": f"gpt-oss-{name}", "cap_gib": cap_gib, "mode": mode, "cpu_share_split": split,
           "positions": got.shape[0],
           "path_offloaded": path_offloaded, "path_resident": path_resident,
           "max_abs_diff": diff.max().item(), "bit_identical": bool(torch.equal(got, want)),
           "top1_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item()}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    use_expandable_segments()  # as the CLI runs: before the first CUDA allocation
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="20b:4,20b:8,120b:24")
    ap.add_argument("--modes", default="gpu,default",
                    help="comma-separated: gpu, default, auto, or a CPU fraction like 0.5")
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens per run")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (no GPU needed)")
    ap.add_argument("--check", default="", help="cases (like --cases, optionally :MODE) whose offloaded logits are "
                                                "compared with an all-resident run of the same weights before timing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and not args.smoke:
        print("no CUDA device: running the CPU smoke test", flush=True)
    dev = torch.device("cpu" if smoke else "cuda")
    t0 = time.perf_counter()
    numba_ok = cpu_experts.kernels() is not None
    compile_s = cpu_experts.warm_up() if numba_ok else 0.0
    costs = measure_costs(dev, 64, 64) if smoke else measure_costs(dev)
    out = {"gpu": "cpu" if smoke else torch.cuda.get_device_name(), "cpu_cores": os.cpu_count(),
           "numba": numba_ok, "numba_error": cpu_experts.numba_error, "cpu_kernel_warm_up_s": compile_s,
           "h2d_gb_s": measure_h2d(dev, 512 << 20 if not smoke else 16 << 20) / 1e9,
           "expert_costs": costs.to_dict(), "measure_s": time.perf_counter() - t0, "cases": []}
    print(f"host->{dev.type} copy {out['h2d_gb_s']:.1f} GB/s; staging path's CPU experts (expert_mix, not the "
          f"in-graph share, which each load times) {costs.cpu_bytes_s / 1e9:.1f} GB/s on {costs.cpu_threads} threads "
          f"(numba {numba_ok}, warm-up {compile_s:.1f} s), share of misses {costs.cpu_fraction:.2f}", flush=True)
    out["checks"] = [check_case(c.split(":")[0], float(c.split(":")[1]), *c.split(":")[2:3])
                     for c in args.check.split(",") if c and not smoke]
    cases = ["tiny:0"] if smoke else args.cases.split(",")
    for case in cases:
        name, cap = case.split(":")
        out["cases"].append(run_case(name, float(cap), modes, smoke, args.tokens if not smoke else 8,
                                     512 if not smoke else 40))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "offload.json").write_text(json.dumps(out, indent=2))
    for r in out["cases"]:
        for mode, m in r["modes"].items():
            print(f"{r['model']:<13} cap {r['cap_gib']:>4} GiB  offloaded {r['offloaded_layers']:>2} layers  "
                  f"pp512 {m['prefill512_tok_s']:8.0f}  mode {mode:<7} tg {m['decode_tok_s']:6.1f} tok/s  "
                  f"hit {m.get('decode_cache_hit_rate', 1.0):.2f}  "
                  f"{m.get('decode_bytes_from_host_per_token', 0) / 1e6:.0f} MB/token over PCIe, "
                  f"{m.get('decode_cpu_bytes_per_token', 0) / 1e6:.0f} MB on the CPU (split "
                  f"{m.get('cpu_share_split')} at {m.get('cpu_share_gb_s') or 0:.1f} GB/s, graphs {m.get('graphs')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
