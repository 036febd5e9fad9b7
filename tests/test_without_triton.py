"""A failed Triton install degrades speed, never function: the torch path loads and runs every plan option."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None  # any `import triton` now fails, as on a PC where it did not install
    from types import SimpleNamespace
    import torch, gptoss_cli
    plan = SimpleNamespace(embedding="cpu", lm_head="gpu", experts_on_gpu=(0, 1, 2), context_length=256,
                           attn_precision="int8", lm_head_precision="int8", prefill_chunk=64, expert_cache_slots=0)
    engine = gptoss_cli.load(sys.argv[1], device="cpu", dtype=torch.float32, plan=plan)
    assert engine.model.ops.name == "reference", engine.model.ops.name
    out = list(engine.generate([1, 2, 3, 4], max_new_tokens=5, temperature=0, stop=[]))
    print(len(out), engine.logits([5, 6, 7]).shape[0])
""")


def test_engine_runs_without_triton(tiny_model_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["5", "3"]


def test_torch_path_int8_rule_equals_the_kernels_rule() -> None:
    int8 = pytest.importorskip("gptoss_kernels.int8", reason="the kernels' module needs Triton")
    from gptoss_cli.model.transformer import Int8Weight

    w = torch.randn(37, 64, generator=torch.Generator().manual_seed(0))
    w[3] = 0
    ours = Int8Weight.quantize(w)
    q, scale = int8.quantize_int8(w)
    assert torch.equal(ours.q, q) and torch.equal(ours.scale, scale)
