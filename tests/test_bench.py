"""`gptoss bench` on the CPU with a tiny model: the measurements exist and the bandwidth floor is the spec's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gptoss_cli.engine.bench import decode_bytes_per_token
from gptoss_cli.model.config import official_config


def test_decode_bytes_match_the_performance_spec() -> None:
    # specs/performance.md: 3.708 GB (20b) and 5.003 GB (120b) of weights per token at batch 1.
    assert abs(decode_bytes_per_token(official_config("gpt-oss-20b"), 0) / 1e9 - 3.708) < 0.001
    assert abs(decode_bytes_per_token(official_config("gpt-oss-120b"), 0) / 1e9 - 5.003) < 0.001
    # KV: 2 KiB per token per full-attention layer; 12 of them in 20b -> +0.81 GB at 32k.
    grow = decode_bytes_per_token(official_config("gpt-oss-20b"), 32768) - decode_bytes_per_token(
        official_config("gpt-oss-20b"), 0)
    assert abs(grow / 1e9 - 0.805) < 0.01


def test_bench_json_on_a_tiny_model(tiny_model_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gptoss_cli", "bench", str(tiny_model_dir), "--device", "cpu",
                          "--prompt", "32,64", "--depth", "0,40", "--decode", "4", "--repeats", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["prefill_tok_s"]) == {"32", "64"} and set(result["decode_tok_s"]) == {"0", "40"}
    assert all(v > 0 for v in result["prefill_tok_s"].values())
    assert all(v > 0 for v in result["decode_tok_s"].values())


def test_bench_needs_a_model_or_random() -> None:
    out = subprocess.run([sys.executable, "-m", "gptoss_cli", "bench", "--device", "cpu"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--random" in out.stderr


def test_bench_reports_offloaded_experts(tiny_model_dir: Path) -> None:
    import torch

    import gptoss_cli
    from gptoss_cli.bench_view import render
    from gptoss_cli.engine.bench import run_bench
    from gptoss_cli.engine.offload import with_offload

    engine = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32, context_length=128)
    engine.offload = with_offload(engine.model, 2, [0, 2], cpu_fraction=0.5)
    result = run_bench(engine, "tiny", [16], [8], decode_tokens=4, repeats=1)
    o = result.offload
    assert o is not None and o["layers"] == 2 and o["cpu_fraction"] == 0.5
    assert o["cpu_experts_per_token"] > 0 and o["pcie_bytes_per_token"] >= 0 and 0 <= o["hit_rate"] <= 1
    assert "computed on the CPU" in str(render(result).caption)
    assert json.loads(json.dumps(result.to_dict()))["offload"]["layers"] == 2
    assert o["cpu_share_split"] is None and o["cpu_share_gb_s"] is None  # no in-place decode on the CPU
    o.update(cpu_share_split=1888, cpu_share_gb_s=23.4, cpu_bytes_per_token=437e6)  # as a GPU run with a share
    assert "437 MB of experts a token read by the CPU (columns from 1888 on, 23.4 GB/s timed at load)" in \
        str(render(result).caption)


def test_bench_vram_cap_needs_a_cuda_device() -> None:
    out = subprocess.run([sys.executable, "-m", "gptoss_cli", "bench", "--random", "20b", "--vram", "8GB",
                          "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--vram needs a CUDA device" in out.stderr


def test_bench_remembers_the_rates_it_measured_for_later_plans(tiny_model_dir: Path, monkeypatch,
                                                                capsys) -> None:
    """What a bench on a GPU measured (copy and host->GPU rates, here faked: the test runs on the CPU) is kept for
    the GPU's name, where plan_for finds it; a CPU run (no host->GPU rate) keeps nothing."""
    from gptoss_cli import speeds
    from gptoss_cli.bench_view import run_bench_command
    from gptoss_cli.engine import bench
    from gptoss_cli.engine.bench import BenchResult

    real = bench.run_bench
    run_bench_command(str(tiny_model_dir), None, "16", "0", 2, 1, "cpu", True, None)
    assert speeds.path().exists() is False

    def on_a_gpu(*args, **kwargs) -> BenchResult:
        result = real(*args, **kwargs)
        result.device, result.bandwidth_gb_s, result.h2d_gb_s = "NVIDIA GeForce RTX 4070", 480.0, 24.5
        return result

    monkeypatch.setattr(bench, "run_bench", on_a_gpu)
    run_bench_command(str(tiny_model_dir), None, "16", "0", 2, 1, "cpu", True, None)
    got = speeds.recall("NVIDIA GeForce RTX 4070")
    assert got is not None and (got.gpu_copy_gb_s, got.h2d_gb_s) == (480.0, 24.5)
    assert '"h2d_gb_s": 24.5' in capsys.readouterr().out  # and --json shows it
