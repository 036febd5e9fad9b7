"""The CPU MXFP4 expert kernel (engine/cpu_experts.py) against the torch reference math of ``moe_reference``.

Shapes are small and awkward (odd numbers of 32-element groups, E not a power of two), weights use every byte
value and scales spread over the range (including the ones that leave the kernel's fast decode), biases push the
SwiGLU pre-activations past the +-7 clamp. fp32: the kernel sums in another order than torch's matmul, so results
agree to fp32 rounding (1e-5 relative to the output's scale); the decode itself is checked bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gptoss_kernels import mxfp4

from gptoss_cli.engine import cpu_experts as ce
from gptoss_cli.engine.offload import OffloadCosts, measure_costs
from gptoss_cli.model.transformer import swiglu

needs_numba = pytest.mark.skipif(not ce.HAVE_NUMBA, reason="numba is not installed")
PATHS = [pytest.param(True, id="numba", marks=needs_numba), pytest.param(False, id="torch")]


def _tensors(H: int, I: int, E: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        gate_up_blocks=torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=gen),
        gate_up_scales=torch.randint(118, 126, (E, 2 * I, H // 32), dtype=torch.uint8, generator=gen),
        gate_up_bias=8 * torch.randn(E, 2 * I, generator=gen),  # many pre-activations beyond +-7
        down_blocks=torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=gen),
        down_scales=torch.randint(116, 124, (E, H, I // 32), dtype=torch.uint8, generator=gen),
        down_bias=torch.randn(E, H, generator=gen),
    )


def _reference(x: torch.Tensor, t: dict[str, torch.Tensor], ids: list[int], weights: list[float],
               act_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """moe_reference's per-expert lines (gptoss_kernels/moe.py) for an explicit list of experts and weights."""
    out = torch.zeros(x.shape[-1], dtype=torch.float32)
    for e, w in zip(ids, weights):
        w1 = mxfp4.dequantize(t["gate_up_blocks"][e], t["gate_up_scales"][e], torch.float32)
        gate_up = x.float() @ w1.T + t["gate_up_bias"][e].float()
        h = swiglu(gate_up, 1.702, 7.0).to(act_dtype).float()
        w2 = mxfp4.dequantize(t["down_blocks"][e], t["down_scales"][e], torch.float32)
        y = h @ w2.T + t["down_bias"][e].float()
        out += y * torch.tensor(w, dtype=torch.float32)
    return out


def _assert_close(got: np.ndarray, want: torch.Tensor, rel: float = 1e-5) -> None:
    scale = want.abs().max().item()
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=rel, atol=rel * scale)


SHAPES = [(96, 160, 5), (32, 32, 1), (160, 96, 7)]  # H, I, E: 3/5/1 groups of 32


@pytest.mark.parametrize("use_numba", PATHS)
@pytest.mark.parametrize(("H", "I", "E"), SHAPES)
def test_matches_the_reference_for_expert_sets(use_numba: bool, H: int, I: int, E: int) -> None:
    t = _tensors(H, I, E, seed=H + I + E)
    experts = ce.HostExperts.from_tensors(**t)
    x = torch.randn(H, generator=torch.Generator().manual_seed(1))
    sets = [
        ([0], [1.0]),
        ([E - 1, 0], [0.7, 0.3]),
        ([E // 2, E // 2], [0.5, 0.5]),  # the same expert twice, tied weights: counted twice
        (list(range(E)), [1.0 / E] * E),  # every expert, equal weights
        (list(range(E - 1, -1, -1)), [0.0] + [0.25] * (E - 1)),  # a zero weight, reversed order
    ]
    for ids, weights in sets:
        got = ce.expert_mix(x, experts, ids, weights, use_numba=use_numba)
        assert got.dtype == np.float32 and got.shape == (H,)
        _assert_close(got, _reference(x, t, ids, weights))
    assert not ce.expert_mix(x, experts, [], [], use_numba=use_numba).any()


@pytest.mark.parametrize("use_numba", PATHS)
def test_agrees_with_moe_reference_on_routed_tokens(use_numba: bool) -> None:
    moe = pytest.importorskip("gptoss_kernels.moe", reason="the reference lives beside the Triton kernels")
    H, I, E, k = 96, 64, 6, 3
    t = _tensors(H, I, E, seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, H, generator=gen)
    router_w, router_b = torch.randn(E, H, generator=gen) / H**0.5, torch.randn(E, generator=gen)
    want = moe.moe_reference(x, router_w, router_b, t["gate_up_blocks"], t["gate_up_scales"], t["gate_up_bias"],
                             t["down_blocks"], t["down_scales"], t["down_bias"], k)
    ids, weights = moe.route(x, router_w, router_b, k)
    experts = ce.HostExperts.from_tensors(**t)
    for row in range(x.shape[0]):
        got = ce.expert_mix(x[row], experts, ids[row].tolist(), weights[row].numpy(), use_numba=use_numba)
        _assert_close(got, want[row])


@needs_numba
def test_decodes_every_code_and_scale_exactly() -> None:
    """A one-hot activation reads one dense column out of the kernel: it must be the dequantized weight, bit for
    bit, for every byte and every scale (rows whose scales lie in 2..240 take the vector decode, the others the
    table)."""
    R, G = 255, 3
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (1, R, G, 16), dtype=torch.uint8, generator=gen)
    blocks[0, :16, 0] = torch.arange(256, dtype=torch.uint8).view(16, 16)  # every byte value at least once
    scales = ((torch.arange(R * G) * 7) % 255).to(torch.uint8).view(1, R, G)  # 0..254
    big = scales >= 253  # keep 2**126 and 2**127 finite: magnitudes 0, 0.5 and 1 only there
    blocks[big] &= 0xA9
    dense = mxfp4.dequantize(blocks[0], scales[0], torch.float32)
    assert torch.isfinite(dense).all()
    zeros, ids, ones = np.zeros((1, R), np.float32), np.zeros(1, np.int64), np.ones(1, np.float32)
    got = np.empty((R, G * 32), np.float32)
    out = np.empty(R, np.float32)
    for col in range(G * 32):
        h = np.zeros((1, G * 32), np.float32)
        h[0, col] = 1.0
        ce.kernels().down_mix(blocks.numpy(), scales.numpy(), zeros, ids, ones, np.ascontiguousarray(h[:, 0::2]),
                     np.ascontiguousarray(h[:, 1::2]), out)
        got[:, col] = out
    assert torch.equal(torch.from_numpy(got), dense)


@needs_numba
def test_without_avx512_the_fp16_decode_is_exact_too(tmp_path) -> None:
    """On a CPU without AVX-512 (most desktop Intel cores) the kernels decode through fp16 instead of the 16-lane
    table permute: compiled for such a target (NUMBA_CPU_FEATURES without avx512*, fresh cache), in another
    process, the same exactness and reference checks pass."""
    import os
    import subprocess
    import sys

    from llvmlite import binding as llvm

    features = ",".join(f"-{name}" if name.startswith("avx512") else f"{'+' if on else '-'}{name}"
                        for name, on in llvm.get_host_cpu_features().items())
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_cpu_experts as t; "
        "assert not t.ce.kernels().AVX512; t.test_decodes_every_code_and_scale_exactly(); "
        "[t.test_matches_the_reference_for_expert_sets(True, *shape) for shape in t.SHAPES]; print('ok')")
    env = {**os.environ, "NUMBA_CPU_FEATURES": features, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("use_numba", PATHS)
def test_h_is_rounded_to_the_activation_dtype(use_numba: bool) -> None:
    H, I, E = 64, 96, 3
    t = _tensors(H, I, E, seed=9)
    experts = ce.HostExperts.from_tensors(**t)
    x = torch.randn(H, generator=torch.Generator().manual_seed(2)).bfloat16().float()
    ids, weights = [2, 0], [0.6, 0.4]
    want = _reference(x, t, ids, weights, torch.bfloat16)
    unrounded = _reference(x, t, ids, weights, torch.float32)
    got = torch.from_numpy(ce.expert_mix(x, experts, ids, weights, torch.bfloat16, use_numba=use_numba))
    # an fp32 summation-order difference can flip a bf16 rounding of h now and then; no rounding is far off
    assert (got - want).abs().max() < 0.25 * (unrounded - want).abs().max()
    assert (got - want).abs().max() <= 2**-7 * want.abs().max()


def test_without_numba_the_torch_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ce, "HAVE_NUMBA", False)
    t = _tensors(64, 64, 2, seed=4)
    x = torch.randn(64, generator=torch.Generator().manual_seed(4))
    got = ce.expert_mix(x, ce.HostExperts.from_tensors(**t), [1, 0], [0.5, 0.5])
    _assert_close(got, _reference(x, t, [1, 0], [0.5, 0.5]))
    with pytest.raises(RuntimeError, match="numba"):
        ce.expert_mix(x, ce.HostExperts.from_tensors(**t), [1], [1.0], use_numba=True)


def test_bad_inputs_are_refused() -> None:
    experts = ce.HostExperts.from_tensors(**_tensors(64, 32, 2, seed=0))
    x = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="expert ids"):
        ce.expert_mix(x, experts, [2], [1.0])
    with pytest.raises(ValueError, match="weights"):
        ce.expert_mix(x, experts, [0, 1], [1.0])
    with pytest.raises(ValueError, match="do not fit"):
        ce.expert_mix(np.zeros(32, np.float32), experts, [0], [1.0])


@pytest.mark.parametrize("use_numba", PATHS)
def test_rates_are_measured_at_small_shapes(use_numba: bool) -> None:
    rate = ce.measure_cpu_rate(64, 64, threads=1, use_numba=use_numba, repeats=2)
    assert rate.bytes_s > 0 and rate.call_s >= 0 and rate.threads == 1 and rate.numba == use_numba
    costs = measure_costs("cpu", 64, 64, threads=1, use_numba=use_numba)
    assert costs.pcie_bytes_s > 0 and costs.cpu_bytes_s > 0 and 0 < costs.cpu_fraction < 1
    assert ce.warm_up(use_numba) >= 0


def test_the_cost_model_balances_cpu_and_pcie() -> None:
    mb = 1_000_000
    even = OffloadCosts(pcie_bytes_s=50e9, cpu_bytes_s=50e9)
    assert even.cpu_fraction == 0.5
    assert [even.cpu_share(m, 13 * mb) for m in range(5)] == [0, 0, 1, 1, 2]  # ties leave work on the GPU
    slow_cpu = OffloadCosts(pcie_bytes_s=55e9, cpu_bytes_s=5e9)
    assert slow_cpu.cpu_share(4, 13 * mb) == 0 and slow_cpu.cpu_share(12, 13 * mb) == 1
    fast_cpu = OffloadCosts(pcie_bytes_s=10e9, cpu_bytes_s=90e9)
    assert fast_cpu.cpu_share(4, 13 * mb) == 4 and fast_cpu.cpu_share(10, 13 * mb) == 9
    costly_call = OffloadCosts(pcie_bytes_s=50e9, cpu_bytes_s=50e9, cpu_call_s=1.0)
    assert costly_call.cpu_share(4, 13 * mb) == 0
    assert OffloadCosts(pcie_bytes_s=50e9, cpu_bytes_s=0.0).cpu_share(4, 13 * mb) == 0
