"""Engine-core checks on a CUDA GPU (issue 2): parity with transformers on CUDA, and the full 20b shape's load
time and peak memory with experts kept packed.

    python benchmarks/gpu_engine_core.py [--out DIR] [--skip-full]

Prints a table; writes JSON to --out if given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import gptoss_cli
from gptoss_cli.model.random_weights import config_dict, tiny_config_dict, write_checkpoint

SHAPES = {
    "tiny-gqa": tiny_config_dict(),
    "mha-4-layers": tiny_config_dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                                     hidden_size=96, intermediate_size=64, num_local_experts=8,
                                     num_experts_per_tok=4, sliding_window=32),
    "20b-heads-2-layers": tiny_config_dict(num_hidden_layers=2, num_attention_heads=64, num_key_value_heads=8,
                                           head_dim=64, hidden_size=2880, intermediate_size=2880,
                                           num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
                                           original_max_position_embeddings=4096, rope_factor=32.0,
                                           vocab_size=4096),
}


def parity(root: Path, n_tokens: int = 600) -> list[dict]:
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must mean fp32 (no TF32 matmuls) for the oracle check
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    rows = []
    for name, raw in SHAPES.items():
        model_dir = write_checkpoint(root / name, raw, seed=1)
        ids = torch.randint(0, raw["vocab_size"], (n_tokens,), generator=torch.Generator().manual_seed(0))
        hf = {}
        # The oracle runs on the CPU in fp32 (on CUDA transformers may route experts through bf16 grouped GEMMs).
        for dtype, device in ((torch.float32, "cpu"), (torch.bfloat16, "cuda")):
            m = transformers.GptOssForCausalLM.from_pretrained(
                model_dir, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=dtype).to(device)
            with torch.no_grad():
                hf[dtype] = m.eval()(ids[None].to(device)).logits[0].float().cuda()
            del m
        for dtype in (torch.float32, torch.bfloat16):
            # the reference path: the model math itself on CUDA (the Triton path is checked by gpu_fast_path.py)
            engine = gptoss_cli.load(model_dir, device="cuda", dtype=dtype, fast=False)
            ours = engine.logits(ids.tolist())
            # incremental path too: prefill half, decode the rest token by token
            engine.prefill(ids[: n_tokens // 2].tolist())
            inc = torch.stack([engine.step(t) for t in ids[n_tokens // 2:].tolist()])
            ref32 = hf[torch.float32]
            row = {
                "shape": name, "dtype": str(dtype).replace("torch.", ""), "tokens": n_tokens,
                "max_abs_vs_hf_fp32": (ours - ref32).abs().max().item(),
                "mean_abs_vs_hf_fp32": (ours - ref32).abs().mean().item(),
                "max_abs_vs_hf_same_dtype": (ours - hf[dtype]).abs().max().item(),
                "hf_bf16_vs_hf_fp32": (hf[torch.bfloat16] - ref32).abs().max().item(),
                "top1_agree_vs_hf_fp32": (ours.argmax(-1) == ref32.argmax(-1)).float().mean().item(),
                "incremental_vs_full": (inc[:-1] - ours[n_tokens // 2:-1]).abs().max().item(),
                "logit_scale": ref32.abs().max().item(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del engine
            torch.cuda.empty_cache()
    return rows


def full_shape(root: Path, layers: int, experts: int) -> dict:
    raw = config_dict(num_hidden_layers=layers, num_local_experts=experts)
    t0 = time.perf_counter()
    model_dir = write_checkpoint(root / f"full-{layers}x{experts}", raw, seed=0, shards=9, device="cuda")
    write_s = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    engine = gptoss_cli.load(model_dir, device="cuda", context_length=8192)
    load_s = engine.load_seconds
    after_load = torch.cuda.max_memory_allocated() - base
    resident = torch.cuda.memory_allocated() - base
    ids = torch.randint(0, 200000, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = list(engine.generate(ids, max_new_tokens=32, temperature=0, stop=[]))
    torch.cuda.synchronize()
    stats = engine.stats
    row = {
        "shape": f"{layers} layers x {experts} experts", "checkpoint_bytes_on_disk": disk, "write_seconds": write_s,
        "load_seconds": load_s, "resident_gpu_bytes": resident, "peak_gpu_bytes_during_load": after_load,
        "peak_gpu_bytes_after_512_prefill_32_decode": torch.cuda.max_memory_allocated() - base,
        "kv_cache_bytes": engine.cache.nbytes,
        "reference_prefill_tok_s": stats.prefill_tokens_per_second,
        "reference_decode_tok_s": stats.decode_tokens_per_second, "generated": len(out),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="where to write checkpoints (default: a temp dir)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="gptoss-gpu-"))
    result = {"parity": parity(root)}
    if not args.skip_full:
        result["full_20b"] = full_shape(root, 24, 32)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_core.json").write_text(json.dumps(result, indent=2))
    print("\nshape                dtype     max|d| vs HF fp32(cpu)  mean|d|  vs HF same  HF bf16 vs fp32  top1   incr-vs-full")
    for r in result["parity"]:
        print(f"{r['shape']:<20} {r['dtype']:<9} {r['max_abs_vs_hf_fp32']:22.2e} {r['mean_abs_vs_hf_fp32']:8.1e} "
              f"{r['max_abs_vs_hf_same_dtype']:10.2e} "
              f"{r['hf_bf16_vs_hf_fp32']:15.2e} {r['top1_agree_vs_hf_fp32']:.4f} {r['incremental_vs_full']:10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
