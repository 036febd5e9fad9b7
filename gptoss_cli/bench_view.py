"""What ``gptoss bench`` prints: a llama-bench-like table, or JSON."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from .engine.bench import BenchResult


def _parse_list(text: str, what: str) -> list[int]:
    from .errors import UsageError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be a comma-separated list of token counts, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UsageError(f"{what} must list non-negative token counts, got {text!r}")
    return values


def run_bench_command(model: str | None, random: str | None, prompts: str, depths: str, decode: int, repeats: int,
                      device: str, json_out: bool, models_dir: str | None, vram: str | None = None) -> None:
    import torch

    from .engine.bench import run_bench
    from .engine.generator import load, load_random, resolve_device
    from .errors import UsageError
    from .model.config import official_config

    prompt_list, depth_list = _parse_list(prompts, "--prompt"), _parse_list(depths, "--depth")
    err = Console(stderr=True)
    context = max(max(prompt_list), max(depth_list) + decode, 64) + 8
    if random:
        name = {"20b": "gpt-oss-20b", "120b": "gpt-oss-120b"}.get(random, random)
        if name not in ("gpt-oss-20b", "gpt-oss-120b"):
            raise UsageError(f"--random takes 20b or 120b, got {random!r}")
        ref, label = name, f"{name} (random weights)"
    elif model:
        from .store import resolve_model

        ref = str(resolve_model(model, models_dir))
        label = model
    else:
        raise UsageError("give a MODEL or --random 20b|120b")
    plan = None
    if vram is not None:
        plan = _plan_within(ref, vram, context, resolve_device(device))
        label += f", planned for {vram} of VRAM"
    with err.status("loading model…") as status:
        if random:
            engine = load_random(official_config(ref), device=device, context_length=context, plan=plan)
        else:
            engine = load(ref, device=device, context_length=context, plan=plan)
        if plan is not None:  # the runs, not the load (random weights are drawn on the GPU), see the cap
            _cap_memory(engine.device, vram)
        result = run_bench(engine, label, prompt_list, depth_list, decode, repeats,
                           progress=lambda msg: status.update(msg))
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if result.h2d_gb_s:  # this machine's rates, for the speed estimate of every later plan
        from . import speeds

        # under a --vram cap the copy probe may have had to shrink (and read low): keep only the PCIe rate then
        speeds.remember(result.device, gpu_copy_gb_s=result.bandwidth_gb_s if vram is None else None,
                        h2d_gb_s=result.h2d_gb_s)
    if json_out:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        Console().print(render(result))


def _plan_within(ref: str, vram: str, context: int, device) -> object:
    """The plan for ``vram`` of free VRAM at the bench's context."""
    from .errors import GptossError, UsageError
    from .hardware import HardwareOverride, detect
    from .plan import Wishes, plan_for

    override = HardwareOverride.from_strings(vram, None)
    if not override.vram_bytes:
        raise UsageError("--vram must be a size above 0, e.g. 8GB")
    if device.type != "cuda":
        raise UsageError("--vram needs a CUDA device")
    plan = plan_for(ref, detect(override), Wishes(context=context))
    if not plan.fits:
        raise GptossError(f"the model does not fit {vram} of VRAM: {plan.refusal_reason}")
    return plan


def _cap_memory(device, vram: str) -> None:
    """Cap this process's CUDA memory at ``vram``, so the runs fit a card that small or fail as they would there."""
    import gc

    import torch

    from .hardware import parse_size

    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, parse_size(vram, "--vram") / total), device)


def render(result: BenchResult) -> Table:
    table = Table(title=f"{result.model} on {result.device} ({result.path} path, median of {result.repeats})")
    for col in ("test", "tok/s", "notes"):
        table.add_column(col, justify="right" if col == "tok/s" else "left")
    for n, rate in result.prefill_tok_s.items():
        table.add_row(f"pp{n}", f"{rate:,.0f}", f"TTFT {result.ttft_ms[n]:,.0f} ms")
    for depth, rate in result.decode_tok_s.items():
        floor = result.floor_tok_s.get(depth)
        note = f"{result.percent_of_floor(depth):.0f}% of the {floor:,.0f} tok/s floor" if floor else ""
        table.add_row(f"tg @ depth {depth}", f"{rate:,.1f}", note)
    table.caption = (f"load {result.load_seconds:.1f} s · peak GPU memory {result.peak_memory_bytes / 1e9:.2f} GB · "
                     f"copy bandwidth {result.bandwidth_gb_s:,.0f} GB/s")
    if result.h2d_gb_s:
        table.caption += f" · host→GPU {result.h2d_gb_s:,.1f} GB/s (remembered for `gptoss plan`)"
    if result.offload:
        o = result.offload
        table.caption += (f"\nexperts of {o['layers']} layers in RAM: per decode token "
                          f"{o['pcie_bytes_per_token'] / 1e6:,.0f} MB over PCIe, "
                          f"{o['cpu_experts_per_token']:.1f} experts computed on the CPU, cache hit rate "
                          f"{o['hit_rate']:.0%}")
        if o.get("cpu_share_split") is not None:
            table.caption += (f"\nCPU share: {o['cpu_bytes_per_token'] / 1e6:,.0f} MB of experts a token read by "
                              f"the CPU (columns from {o['cpu_share_split']} on"
                              + (f", {o['cpu_share_gb_s']:.1f} GB/s timed at load" if o.get("cpu_share_gb_s") else "")
                              + ")")
    return table
