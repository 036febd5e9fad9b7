"""The whole model on the Triton fast path (CPU interpreter) against the reference path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is needed for the fast path (pip install triton)")

SCRIPT = textwrap.dedent("""
    import sys, torch, gptoss_cli
    model_dir = sys.argv[1]
    ref = gptoss_cli.load(model_dir, device="cpu", dtype=torch.float32, fast=False)
    fast = gptoss_cli.load(model_dir, device="cpu", dtype=torch.float32, fast=True)
    assert fast.model.ops.name == "triton" and ref.model.ops.name == "reference"
    ids = torch.randint(0, 1024, (41,), generator=torch.Generator().manual_seed(0)).tolist()
    full_ref = ref.logits(ids)
    fast.prefill_chunk = 13
    rows = [fast.prefill(ids[:30])] + [fast.step(t) for t in ids[30:39]]
    got = torch.stack(rows)
    diff = (got - full_ref[29:39]).abs().max().item()
    full_fast = fast.logits(ids)
    # the fused one-token step the CUDA graphs replay, called directly (no graphs on the CPU)
    from gptoss_cli.model.fast import decode_step
    fast.prefill(ids[:39])
    pos = torch.tensor([39])
    hidden = decode_step(fast.model, fast.model.embed(torch.tensor(ids[39:40])), pos, fast.cache, 64)
    fused = fast.model.logits(hidden)[0]
    fused_diff = (fused - full_ref[39]).abs().max().item()
    print(f"{diff:.3e} {(full_fast - full_ref).abs().max().item():.3e} {fused_diff:.3e}")
""")


def test_fast_path_matches_reference_under_the_interpreter(tiny_model_dir: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    incremental, full, fused = (float(v) for v in out.stdout.split())
    # fp32 everywhere; kernels sum in a different order than torch, so not bit-equal, but close.
    assert incremental < 1e-3 and full < 1e-3 and fused < 1e-3


ODD_HEAD = textwrap.dedent("""
    import sys, torch, gptoss_cli
    from gptoss_cli.model.fast import decode_step
    from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint
    d = write_checkpoint(sys.argv[1], tiny_config_dict(head_dim=24, num_hidden_layers=2), seed=2)
    ref = gptoss_cli.load(d, device="cpu", dtype=torch.float32, fast=False)
    fast = gptoss_cli.load(d, device="cpu", dtype=torch.float32, fast=True)
    ids = list(range(3, 23))
    want = ref.logits(ids)[-1]
    fast.prefill(ids[:-1])
    hidden = decode_step(fast.model, fast.model.embed(torch.tensor(ids[-1:])), torch.tensor([19]), fast.cache, 32)
    print(f"{(fast.model.logits(hidden)[0] - want).abs().max().item():.3e}")
""")


def test_fused_step_falls_back_for_a_head_dim_the_kernels_do_not_take(tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", ODD_HEAD, str(tmp_path / "m")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout) < 1e-3


def test_fused_step_with_int8_attention_matches_the_reference() -> None:
    """The plan's int8 attention/lm_head through the fused decode step (int8 GEMVs for q/k/v/o and lm_head): same
    logits as the reference path's int8 model (fp32 activations)."""
    import torch

    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.fast import decode_step
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict(num_hidden_layers=2))
    ref = load_random(cfg, device="cpu", dtype=torch.float32, int8=True, fast=False, context_length=64)
    fast = load_random(cfg, device="cpu", dtype=torch.float32, int8=True, fast=True, context_length=64)
    ids = list(range(40, 61))
    want = ref.logits(ids)[-1]
    fast.prefill(ids[:-1])
    hidden = decode_step(fast.model, fast.model.embed(torch.tensor(ids[-1:])), torch.tensor([20]), fast.cache, 32)
    assert (fast.model.logits(hidden)[0] - want).abs().max().item() < 1e-3


PIPELINED = textwrap.dedent("""
    import sys, torch, gptoss_cli
    from gptoss_cli.engine.graphs import DecodeGraphs
    from gptoss_kernels.sample import Publisher
    model_dir = sys.argv[1]
    stepwise = gptoss_cli.load(model_dir, device="cpu", dtype=torch.float32, fast=False)
    piped = gptoss_cli.load(model_dir, device="cpu", dtype=torch.float32, fast=True)
    piped.graphs = DecodeGraphs(piped.model, piped.cache)
    assert isinstance(piped.graphs.publish, Publisher)
    prompt = [5, 9, 200, 7, 31]
    distinct = []
    for params, n in ((dict(temperature=0), 4), (dict(temperature=1.0, seed=4), 3)):
        a = list(stepwise.generate(prompt, max_new_tokens=n, stop=[], **params))
        b = list(piped.generate(prompt, max_new_tokens=n, stop=[], **params))
        assert a == b, (params, a, b)
        # the last step queued produced the n-th id; the graph's position moved on past it
        assert piped.graphs.pos_now == len(prompt) + n - 1 == int(piped.graphs.pos), piped.graphs.pos_now
        distinct.append(len(set(b)))
    print(*distinct)
""")


def test_pipelined_decode_on_the_fast_path_matches_stepwise(tiny_model_dir: Path) -> None:
    """The loop CUDA graphs run, on the Triton kernels under the interpreter: each step looks its id up fused with
    the first norm, takes its ring slots in the RoPE kernel, and ends with the Triton publish (greedy argmax or a
    sampled id, to the next step and the host, position + 1); same ids as the reference path read step by step."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", PIPELINED, str(tiny_model_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert min(int(v) for v in out.stdout.split()) > 1
