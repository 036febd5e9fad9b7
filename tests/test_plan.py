"""The placement planner over hardware profiles: fits what it promises, prefers what it documents,
never trades away what the user asked for, and refuses with a reason and options that work."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_cli.errors import ModelNotFoundError
from gptoss_cli.hardware import GiB, Gpu, Hardware
from gptoss_cli.model.config import official_config
from gptoss_cli.plan import COMFORTABLE_CONTEXT, MIN_CONTEXT, Bandwidths, Plan, PlanError, Wishes, make_plan, plan_for
from gptoss_cli.sizes import tensor_sizes

MODELS = ("gpt-oss-20b", "gpt-oss-120b")
VRAM_GB = (0, 8, 12, 16, 24, 32, 80)  # 0: a machine without an NVIDIA GPU
RAM_GB = (16, 32, 64, 128)
MAX_CONTEXT = 131072


@cache
def _model(name: str):
    config = official_config(name)
    return config, tensor_sizes(config)


def machine(vram_gb: float, ram_gb: float, name: str = "NVIDIA GeForce RTX 4090", capability=(8, 9)) -> Hardware:
    gpus = (Gpu(0, name, capability, int(vram_gb * GiB), int(vram_gb * GiB)),) if vram_gb else ()
    return Hardware(gpus, int(ram_gb * GiB), int(ram_gb * GiB), 16, "Linux")


def plan(model: str, vram_gb: float, ram_gb: float, **wishes) -> Plan:
    config, sizes = _model(model)
    return make_plan(config, sizes, machine(vram_gb, ram_gb), Wishes(**wishes), model=model)


def weights_gb(model: str) -> float:
    return sum(_model(model)[1].values()) / GiB


def check_invariants(p: Plan, vram_gb: float, ram_gb: float) -> None:
    """What every plan promises, fitting or refused."""
    gpu = sum(x.bytes for x in p.parts if x.where == "gpu")
    host = sum(x.bytes for x in p.parts if x.where == "cpu")
    assert (p.gpu_bytes, p.host_bytes) == (gpu, host)
    layers = _model(p.model)[0].num_hidden_layers
    assert p.experts_on_gpu == tuple(range(layers - len(p.experts_on_gpu), layers))  # offload is a prefix
    if p.expert_cache_slots:  # VRAM left over caches offloaded experts, and the plan counts it
        assert len(p.experts_on_gpu) < layers
        assert any(x.name.startswith(f"expert cache, {p.expert_cache_slots} ") for x in p.parts)
    if not p.fits:
        assert re.fullmatch(r"(needs \d+\.\d GB of RAM\+VRAM, you have \d+\.\d GB.*|the model supports .*)",
                            p.refusal_reason)
        return
    assert p.refusal_reason is None and p.est_decode_tok_s > 0
    assert p.host_bytes <= ram_gb * GiB
    if p.device == "cpu":
        assert p.gpu_bytes == 0 and p.experts_on_gpu == () and p.embedding == p.lm_head == "cpu"
    else:
        assert p.gpu_bytes <= vram_gb * GiB - p.headroom_bytes
    if p.requested_context is not None:
        assert p.context_length == p.requested_context
    elif p.context_length < MAX_CONTEXT:
        assert any(f"context reduced from {MAX_CONTEXT} to {p.context_length}" in n for n in p.notes)
    if p.attn_precision == "int8":
        assert any("int8" in n for n in p.notes)


PROFILES = [(m, v, r) for m in MODELS for v in VRAM_GB for r in RAM_GB]


@pytest.mark.parametrize("model, vram, ram", PROFILES)
def test_plans_fit_within_vram_minus_headroom_and_ram(model: str, vram: int, ram: int) -> None:
    p = plan(model, vram, ram)
    check_invariants(p, vram, ram)
    if vram + ram >= weights_gb(model) + 8:  # clearly enough memory: it must run
        assert p.fits, p.refusal_reason
    if vram + ram < weights_gb(model):       # clearly too little: it must be refused, with options
        assert not p.fits and p.refusal_reason.startswith("needs ") and p.suggestions


@pytest.mark.parametrize("ram", RAM_GB)
def test_20b_on_16gb_keeps_every_expert_on_the_gpu_with_at_least_32k_context(ram: int) -> None:
    p = plan("gpt-oss-20b", 16, ram)
    assert p.fits and p.device == "cuda:0"
    assert p.experts_on_gpu == tuple(range(24))
    assert p.context_length >= 32768


def test_120b_on_24gb_vram_and_96gb_ram_runs_with_experts_in_ram() -> None:
    p = plan("gpt-oss-120b", 24, 96)
    check_invariants(p, 24, 96)
    assert p.fits and p.device == "cuda:0"
    assert 0 < len(p.experts_on_gpu) < 36
    assert p.context_length >= COMFORTABLE_CONTEXT
    offloaded = 36 - len(p.experts_on_gpu)
    assert any(f"--n-cpu-moe {offloaded}" in n for n in p.notes)
    assert any("the CPU computes part of each of those experts" in n for n in p.notes)  # the CPU share, on by default


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ram", RAM_GB)
def test_more_vram_never_yields_fewer_gpu_resident_experts(model: str, ram: int) -> None:
    plans = [plan(model, v, ram) for v in VRAM_GB]
    for smaller, larger in zip(plans, plans[1:]):
        assert larger.fits >= smaller.fits
        if smaller.fits:
            assert set(larger.experts_on_gpu) >= set(smaller.experts_on_gpu)


@settings(max_examples=120, deadline=None)
@given(model=st.sampled_from(MODELS), vram=st.integers(0, 400), extra=st.integers(1, 100),
       ram=st.integers(16, 600), context=st.sampled_from([None, 8192, 65536]), quantize=st.booleans())
def test_more_vram_never_yields_fewer_gpu_resident_experts_anywhere(model, vram, extra, ram, context,
                                                                   quantize) -> None:
    """VRAM and RAM in quarter GB, so the boundaries between ladder steps are crossed."""
    small = plan(model, vram / 4, ram / 4, context=context, quantize=quantize)
    large = plan(model, (vram + extra) / 4, ram / 4, context=context, quantize=quantize)
    check_invariants(small, vram / 4, ram / 4)
    check_invariants(large, (vram + extra) / 4, ram / 4)
    assert large.fits >= small.fits
    if small.fits:
        assert set(large.experts_on_gpu) >= set(small.experts_on_gpu)


@pytest.mark.parametrize("model", MODELS)
def test_impossible_cases_are_refused_with_the_shortfall_and_options_that_work(model: str) -> None:
    p = plan(model, 0, 8)
    assert not p.fits
    m = re.fullmatch(r"needs (\d+\.\d) GB of RAM\+VRAM, you have 8\.0 GB", p.refusal_reason)
    assert m and float(m.group(1)) > weights_gb(model)
    ram_option = next(s for s in p.suggestions if "of available system RAM" in s)
    needed = int(ram_option.split()[0])
    assert plan(model, 0, needed).fits and not plan(model, 0, needed - 1).fits


def test_a_refusal_on_a_gpu_names_the_ram_or_vram_that_would_do() -> None:
    p = plan("gpt-oss-120b", 24, 32)
    assert not p.fits and p.refusal_reason == "needs 63.7 GB of RAM+VRAM, you have 56.0 GB"  # incl. the 1.6 GB staging buffer
    ram = int(next(s for s in p.suggestions if "system RAM next to 24.0 GB of VRAM" in s).split()[0])
    vram = int(next(s for s in p.suggestions if s.startswith("a GPU with")).split()[3])
    assert plan("gpt-oss-120b", 24, ram).fits
    assert plan("gpt-oss-120b", vram, 32).fits


def test_plan_for_an_official_model_too_big_suggests_the_smaller_one() -> None:
    p = plan_for("openai/gpt-oss-120b", machine(16, 32))
    assert p.model == "gpt-oss-120b" and not p.fits
    assert "gpt-oss-20b, which fits this machine" in p.suggestions


def test_plan_for_an_unknown_name_says_what_exists() -> None:
    with pytest.raises(ModelNotFoundError) as exc:
        plan_for("gpt-oss-7b", machine(16, 32))
    assert "gpt-oss-20b" in exc.value.hint


# ---- the order of preference --------------------------------------------------------------------

def test_enough_vram_keeps_everything_on_the_gpu_in_bf16_at_full_context() -> None:
    p = plan("gpt-oss-20b", 24, 32)
    assert (p.embedding, p.lm_head, p.attn_precision, p.lm_head_precision) == ("gpu", "gpu", "bf16", "bf16")
    assert p.context_length == MAX_CONTEXT and p.notes == ()


@pytest.mark.parametrize("model, vram, ram", PROFILES)
def test_each_step_is_taken_only_after_the_cheaper_ones(model: str, vram: int, ram: int) -> None:
    p = plan(model, vram, ram)
    if not p.fits or p.device == "cpu":
        return
    if p.attn_precision == "int8":
        assert p.embedding == "cpu"
    layers = _model(model)[0].num_hidden_layers
    if len(p.experts_on_gpu) < layers:
        assert p.embedding == "cpu" and p.attn_precision == "int8"
        assert p.context_length >= COMFORTABLE_CONTEXT or "system RAM cannot take more experts" in " ".join(p.notes)
    if p.context_length < COMFORTABLE_CONTEXT:
        assert p.context_length >= MIN_CONTEXT
    if p.lm_head == "cpu":
        assert p.experts_on_gpu == ()


def test_no_quantize_never_picks_int8_and_offloads_instead() -> None:
    quantized, exact = plan("gpt-oss-20b", 12, 32), plan("gpt-oss-20b", 12, 32, quantize=False)
    assert quantized.attn_precision == "int8"
    assert (exact.attn_precision, exact.lm_head_precision) == ("bf16", "bf16")
    assert len(exact.experts_on_gpu) < len(quantized.experts_on_gpu)
    for v in VRAM_GB:
        p = plan("gpt-oss-120b", v, 128, quantize=False)
        assert p.attn_precision == p.lm_head_precision == "bf16"


def test_a_requested_context_is_kept_by_offloading_more_experts() -> None:
    default, asked = plan("gpt-oss-20b", 12, 32), plan("gpt-oss-20b", 12, 32, context=MAX_CONTEXT)
    assert default.context_length < MAX_CONTEXT
    assert asked.context_length == MAX_CONTEXT and asked.requested_context == MAX_CONTEXT
    assert len(asked.experts_on_gpu) < len(default.experts_on_gpu)
    assert any("context you asked for is kept" in n for n in asked.notes)


def test_a_requested_context_that_cannot_fit_is_refused_not_shrunk() -> None:
    p = plan("gpt-oss-20b", 0, 16, context=MAX_CONTEXT + 1)
    assert not p.fits and "at most 131072 tokens" in p.refusal_reason
    p = plan("gpt-oss-20b", 0, 20, context=MAX_CONTEXT)
    assert not p.fits
    option = next(s for s in p.suggestions if s.startswith("--context "))
    ctx = int(option.split()[1])
    assert plan("gpt-oss-20b", 0, 20, context=ctx).fits and not plan("gpt-oss-20b", 0, 20, context=ctx + 1024).fits


def test_a_small_requested_context_is_not_padded() -> None:
    assert plan("gpt-oss-20b", 80, 64, context=2048).context_length == 2048


def test_headroom_is_left_free() -> None:
    p = plan("gpt-oss-20b", 16, 32, headroom_bytes=3 * GiB)
    assert p.fits and p.gpu_bytes <= 13 * GiB and p.headroom_bytes == 3 * GiB


def test_without_a_gpu_everything_runs_on_the_cpu_and_says_it_is_slow() -> None:
    p = plan("gpt-oss-20b", 0, 32)
    assert p.fits and p.device == "cpu" and p.gpu_bytes == 0 and p.vram_bytes == 0
    assert {x.where for x in p.parts} == {"cpu"}
    assert any("slow" in n for n in p.notes)
    assert p.est_decode_tok_s < 20


def test_a_pre_ampere_gpu_is_not_used() -> None:
    config, sizes = _model("gpt-oss-20b")
    p = make_plan(config, sizes, machine(24, 32, "NVIDIA GeForce RTX 2080 Ti", (7, 5)))
    assert p.device == "cpu"
    assert any("older than Ampere" in n for n in p.notes)


def test_with_two_gpus_the_one_with_most_free_vram_is_used() -> None:
    config, sizes = _model("gpt-oss-20b")
    hw = Hardware((Gpu(0, "NVIDIA GeForce RTX 3060", (8, 6), 12 * GiB, 11 * GiB),
                   Gpu(1, "NVIDIA GeForce RTX 4090", (8, 9), 24 * GiB, 23 * GiB)), 64 * GiB, 64 * GiB, 16, "Linux")
    p = make_plan(config, sizes, hw)
    assert p.gpu_name == "NVIDIA GeForce RTX 4090" and p.vram_bytes == 23 * GiB
    assert any("uses one GPU" in n for n in p.notes)


# ---- the decode estimate ------------------------------------------------------------------------

def test_decode_estimate_matches_the_measured_anchors() -> None:
    """specs/performance.md: llama.cpp decodes 20b at ~187 tok/s on an RTX 4090 with everything on the GPU."""
    all_gpu = plan("gpt-oss-20b", 24, 32)
    assert 150 < all_gpu.est_decode_tok_s < 230


@pytest.mark.parametrize("model,vram_gb,offloaded,measured", [("gpt-oss-20b", 4, 23, 36.4),
                                                              ("gpt-oss-20b", 8, 13, 60.6),
                                                              ("gpt-oss-120b", 24, 24, 33.2)])
def test_offloaded_decode_estimate_matches_what_the_engine_measured(model: str, vram_gb: int, offloaded: int,
                                                                    measured: float) -> None:
    """BENCHMARKS.md (H200 host, 2026-11-28, 4,096-token context): with experts in RAM the GPU reads each token's
    routed experts across PCIe, measured 36.4 / 60.6 / 33.2 tok/s with 55.5 GB/s pinned copies and 4.1 TB/s
    device copies. The estimate from those two rates lands within -10 % / +15 % of each (it leaves out kernel
    time beyond streaming)."""
    config, sizes = _model(model)
    wishes = Wishes(context=4096, bandwidths=Bandwidths(gpu_gb_s=4100 * 0.7, pcie_gb_s=55.5))
    p = make_plan(config, sizes, machine(vram_gb, 128, "NVIDIA H200", (9, 0)), wishes, model=model)
    assert config.num_hidden_layers - len(p.experts_on_gpu) == offloaded
    assert 0.9 * measured < p.est_decode_tok_s < 1.15 * measured


def test_decode_estimate_uses_measured_bandwidths_when_given() -> None:
    """With experts in RAM the host -> GPU rate bounds decode; without, it does not matter."""
    slow = plan("gpt-oss-20b", 8, 32, bandwidths=Bandwidths(gpu_gb_s=300, pcie_gb_s=12))
    fast = plan("gpt-oss-20b", 8, 32, bandwidths=Bandwidths(gpu_gb_s=300, pcie_gb_s=50))
    assert slow.experts_on_gpu == fast.experts_on_gpu
    assert fast.est_decode_tok_s > 2.5 * slow.est_decode_tok_s
    on_gpu = [plan("gpt-oss-20b", 24, 32, bandwidths=Bandwidths(gpu_gb_s=300, pcie_gb_s=r)) for r in (12, 50)]
    assert on_gpu[0].est_decode_tok_s == on_gpu[1].est_decode_tok_s


def test_an_unknown_gpu_gets_a_conservative_bandwidth_and_says_so() -> None:
    config, sizes = _model("gpt-oss-20b")
    known = make_plan(config, sizes, machine(24, 32, "NVIDIA GeForce RTX 4090"))
    unknown = make_plan(config, sizes, machine(24, 32, "Mystery Accelerator 9000"))
    assert unknown.est_decode_tok_s < known.est_decode_tok_s
    assert any("unknown GPU" in n for n in unknown.notes)


# ---- the plan as data ---------------------------------------------------------------------------

@pytest.mark.parametrize("model, vram, ram", [("gpt-oss-20b", 12, 32), ("gpt-oss-120b", 24, 32),
                                              ("gpt-oss-20b", 0, 64)])
def test_plans_round_trip_through_json(model: str, vram: int, ram: int) -> None:
    p = plan(model, vram, ram, context=8192)
    assert Plan.from_json(p.to_json()) == p


def test_a_damaged_plan_file_is_rejected_with_the_field_at_fault() -> None:
    import json

    raw = json.loads(plan("gpt-oss-20b", 12, 32).to_json())
    with pytest.raises(PlanError, match="attn_precision"):
        Plan.from_json(json.dumps({**raw, "attn_precision": "fp8"}))
    with pytest.raises(PlanError, match="unknown fields \\['surprise'\\]"):
        Plan.from_json(json.dumps({**raw, "surprise": 1}))
    with pytest.raises(PlanError, match="format"):
        Plan.from_json(json.dumps({k: v for k, v in raw.items() if k != "format"}))
    with pytest.raises(PlanError):
        Plan.from_json("{not json")


def test_the_engine_reads_the_fields_it_needs() -> None:
    """The engine's PlacementPlan protocol is satisfied by a Plan."""
    from gptoss_cli.engine.generator import PlacementPlan

    p = plan("gpt-oss-20b", 12, 32)
    for name in PlacementPlan.__annotations__:
        assert hasattr(p, name)
    assert replace(p, context_length=4096).context_length == 4096
