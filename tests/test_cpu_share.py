"""The in-graph CPU share of offloaded decode (engine/cpu_share.py + kernels/moe.py experts_decode_shared).

On a machine without CUDA the kernels run under Triton's interpreter against a real worker thread: the "GPU" side
(publish, its columns, the wait, the combine) and the numba worker talk through the same buffers and flags as on a
GPU, so the hand-off itself is exercised, not only the math.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")
pytest.importorskip("numba", reason="the CPU share is a numba kernel")

from gptoss_kernels import moe as moe_kernels  # noqa: E402
from gptoss_kernels.moe import HostExchange  # noqa: E402

from gptoss_cli.engine import cpu_experts  # noqa: E402
from gptoss_cli.engine.cpu_share import CpuShare, calibrated, split_for  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _layer(H: int, I: int, E: int, dtype: torch.dtype, seed: int) -> tuple:
    """One MoE layer's inputs (x, router, packed experts) with router logits at least 1e-3 apart around the k-th."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, H, generator=gen).to(dtype)
    router_w = (torch.randn(E, H, generator=gen) / H**0.5).to(dtype)
    router_b = torch.randn(E, generator=gen).to(dtype)
    gate_up_blocks = torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, generator=gen)
    gate_up_scales = torch.randint(118, 126, (E, 2 * I, H // 32), dtype=torch.uint8, generator=gen)
    gate_up_bias = (8 * torch.randn(E, 2 * I, generator=gen)).to(dtype)
    down_blocks = torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, generator=gen)
    down_scales = torch.randint(116, 124, (E, H, I // 32), dtype=torch.uint8, generator=gen)
    down_bias = torch.randn(E, H, generator=gen).to(dtype)
    residual = torch.randn(1, H, generator=gen).to(dtype)
    norm_w = (1 + 0.1 * torch.randn(H, generator=gen)).to(dtype)
    return x, router_w, router_b, (gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks, down_scales,
                                   down_bias), residual, norm_w


def _host(experts: tuple) -> cpu_experts.HostExperts:
    return cpu_experts.HostExperts.from_tensors(*experts)


@pytest.mark.parametrize("H,I,E,top_k,split,dtype,team", [(64, 96, 5, 2, 32, torch.float32, 3),
                                                          (96, 64, 4, 4, 32, torch.bfloat16, 2),
                                                          (64, 128, 8, 3, 96, torch.bfloat16, 1)])
def test_shared_decode_ends_the_layer_like_the_gpu_alone(H: int, I: int, E: int, top_k: int, split: int,
                                                         dtype: torch.dtype, team: int) -> None:
    """GPU columns [0, split) + the workers' [split, I) give the residual and normed rows that the all-GPU decode
    (experts_decode with residual) gives, layer after layer and token after token (two requests per slot), whatever
    the team size (3 threads split 32 rows and 2 * 32 columns unevenly)."""
    layers = [_layer(H, I, E, dtype, seed=10 * s + top_k) for s in range(2)]
    share = CpuShare.start({s: _host(layer[3]) for s, layer in enumerate(layers)}, [0, 1], split, top_k, dtype,
                           DEVICE, 1.702, 7.0, threads=team)
    try:
        for step in range(2):
            for slot, (x, router_w, router_b, experts, residual, norm_w) in enumerate(layers):
                x = (x * (1 + step)).to(DEVICE)  # a new token's input
                experts = tuple(t.to(DEVICE) for t in experts)
                args = (residual.to(DEVICE), norm_w.to(DEVICE), 1e-5)
                routing = moe_kernels.router_logits(x, router_w.to(DEVICE), router_b.to(DEVICE))
                want_res, want_t = moe_kernels.experts_decode(x, routing, *experts, top_k, residual=args)
                res, t = moe_kernels.experts_decode_shared(x, routing, *experts, top_k, 1.702, 7.0, args,
                                                           share.exchange, slot)
                scale = want_res.float().abs().max().item()
                tol = dict(rtol=1e-4, atol=1e-4 * scale) if dtype == torch.float32 else dict(rtol=2**-6,
                                                                                           atol=2**-5 * scale)
                torch.testing.assert_close(res.float(), want_res.float(), **tol)
                torch.testing.assert_close(t.float(), want_t.float(), **tol)
        assert share.exchange.flags.tolist() == share.exchange.dones.tolist() == [2, 2]
    finally:
        share.close()
    assert not share.alive and share.error is None


def test_a_worker_that_does_not_answer_gives_nan_not_a_hang() -> None:
    """No worker serves the exchange: the combine kernel gives up after max_polls and the layer's output is NaN."""
    H, I, E, top_k = 64, 64, 4, 2
    x, router_w, router_b, experts, residual, norm_w = _layer(H, I, E, torch.float32, seed=3)
    exchange = HostExchange.allocate(1, top_k, H, 32, DEVICE)
    exchange.max_polls = 10
    routing = moe_kernels.router_logits(x.to(DEVICE), router_w.to(DEVICE), router_b.to(DEVICE))
    res, t = moe_kernels.experts_decode_shared(x.to(DEVICE), routing, *(e.to(DEVICE) for e in experts), top_k,
                                               1.702, 7.0, (residual.to(DEVICE), norm_w.to(DEVICE), 1e-5),
                                               exchange, 0)
    assert torch.isnan(res).all() and torch.isnan(t).all()
    assert exchange.flags.tolist() == [1] and exchange.dones.tolist() == [0]


def test_shared_decode_rejects_what_it_cannot_split() -> None:
    H, I, E, top_k = 64, 64, 4, 2
    x, router_w, router_b, experts, residual, norm_w = (
        t.to(DEVICE) if isinstance(t, torch.Tensor) else tuple(e.to(DEVICE) for e in t)
        for t in _layer(H, I, E, torch.float32, seed=4))
    routing = moe_kernels.router_logits(x, router_w, router_b)
    for split in (0, 48, 64):
        with pytest.raises(ValueError, match="split"):
            moe_kernels.experts_decode_shared(x, routing, *experts, top_k, 1.702, 7.0, (residual, norm_w, 1e-5),
                                              HostExchange.allocate(1, top_k, H, split, DEVICE), 0)


def test_split_for_rounds_to_whole_groups_and_leaves_both_sides_work() -> None:
    assert split_for(0.0, 2880) == 2880  # no share
    assert split_for(0.004, 2880) == 2880  # under half a group
    assert split_for(0.25, 2880) == 2880 - 32 * 22  # 22.5 groups of 90 -> 22 (round half to even)
    assert split_for(0.5, 2880) == 1440
    assert split_for(1.0, 2880) == 32  # the GPU keeps one group
    assert split_for(0.9, 64) == 32


def test_calibration_moves_the_split_to_where_both_sides_finish_together() -> None:
    """``calibrated`` times a first team, then starts one where the measured CPU rate and the GPU's rate balance
    (CPU fraction cpu / (cpu + gpu)), closing the teams it does not keep; a CPU too slow to matter gets none."""
    I, layer_bytes, gpu = 2880, 52_000_000, 45e9
    teams = []

    class Team:  # a team whose requests take their bytes at ``rate`` plus a fixed 30 us
        def __init__(self, split: int, rate: float) -> None:
            self.split, self.rate, self.closed, self.bytes_s = split, rate, False, None
            teams.append(self)

        def time_requests(self) -> float:
            return 30e-6 + layer_bytes * (I - self.split) / I / self.rate

        def close(self) -> None:
            self.closed = True

    for rate, want in ((45e9, 0.5), (15e9, 0.25), (90e9, 2 / 3)):
        teams.clear()
        share = calibrated(lambda split, rate=rate: Team(split, rate), I, layer_bytes, gpu)
        assert share is teams[-1] and not share.closed and all(t.closed for t in teams[:-1]) and len(teams) <= 3
        assert abs((I - share.split) / I - want) < 0.05  # two groups of slack, and the fixed cost slows the CPU
        assert share.bytes_s == pytest.approx(rate, rel=0.1)
    teams.clear()
    assert calibrated(lambda split: Team(split, 1e9), I, layer_bytes, gpu) is None
    assert teams and all(t.closed for t in teams)


def test_an_idle_worker_sleeps_and_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its hot scans the worker sleeps between polls (no core burnt while a chat waits for the user), then
    sleeps longer, and the next request is still served."""
    from gptoss_cli.engine import cpu_share

    monkeypatch.setattr(cpu_share, "HOT_SCANS", 10)
    monkeypatch.setattr(cpu_share, "LIGHT_SLEEPS", 5)
    H, I, E, top_k = 64, 64, 4, 2
    x, router_w, router_b, experts, residual, norm_w = _layer(H, I, E, torch.float32, seed=5)
    share = CpuShare.start({0: _host(experts)}, [0], 32, top_k, torch.float32, DEVICE, 1.702, 7.0, threads=1)
    try:
        import time

        time.sleep(0.05)  # past 10 scans and 5 short sleeps: the worker is in its long sleeps by now
        routing = moe_kernels.router_logits(x.to(DEVICE), router_w.to(DEVICE), router_b.to(DEVICE))
        res, _ = moe_kernels.experts_decode_shared(x.to(DEVICE), routing, *(e.to(DEVICE) for e in experts), top_k,
                                                   1.702, 7.0, (residual.to(DEVICE), norm_w.to(DEVICE), 1e-5),
                                                   share.exchange, 0)
        assert torch.isfinite(res).all()
    finally:
        share.close()


def test_decode_step_with_a_cpu_share_gives_the_logits_of_the_step_without() -> None:
    """The fused decode step routes the shared layers through experts_decode_shared (a team serving layers 0 and 2
    of a 3-layer model): the next-token logits match the step without a share, in fp32 to summation order."""
    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.fast import decode_step
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict())
    engine = load_random(cfg, device=DEVICE.type, dtype=torch.float32, fast=True, graphs=False, context_length=64)
    ids = list(range(40, 57))
    engine.prefill(ids[:-1])
    x = engine.model.embed(torch.tensor(ids[-1:], device=DEVICE))
    pos = torch.tensor([16], device=DEVICE)
    want = engine.model.logits(decode_step(engine.model, x, pos, engine.cache, 32))[0]
    layers = [0, 2]
    host = {i: _host(tuple(getattr(engine.model.layers[i], name) for name in (
        "gate_up_blocks", "gate_up_scales", "gate_up_bias", "down_blocks", "down_scales", "down_bias")))
        for i in layers}
    share = CpuShare.start(host, layers, 32, cfg.num_experts_per_tok, torch.float32, DEVICE, cfg.swiglu_alpha,
                           cfg.swiglu_limit, threads=2)
    try:
        assert share.time_requests(rounds=2) > 0  # as at load: the step's requests count on from these
        got = engine.model.logits(decode_step(engine.model, x, pos, engine.cache, 32, cpu_share=share.slots()))[0]
    finally:
        share.close()
    assert share.exchange.dones.tolist() == [3, 3]  # both shared layers went through the worker
    assert (got - want).abs().max().item() < 1e-3


def test_a_closed_share_stops_decode_with_a_clear_error() -> None:
    """Once the team is gone, the engine refuses the next step (the GPU would otherwise wait and compute NaN)."""
    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.engine.offload import with_offload
    from gptoss_cli.errors import GptossError
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict())
    engine = load_random(cfg, device="cpu", dtype=torch.float32, fast=False, graphs=False, context_length=64)
    off = with_offload(engine.model, 0, [1], cpu_fraction=0.0)
    off.check_share()  # no share: nothing to check
    off.share = CpuShare.start(off.host, off.layers, 32, cfg.num_experts_per_tok, torch.float32,
                               torch.device("cpu"), cfg.swiglu_alpha, cfg.swiglu_limit, threads=1)
    off.check_share()  # alive
    off.close()
    with pytest.raises(GptossError, match="share stopped") as stopped:
        off.check_share()
    assert "GPTOSS_CPU_EXPERTS=0" in stopped.value.hint


def test_the_share_at_load_is_timed_on_the_models_experts_and_kept_only_where_it_pays() -> None:
    """start_share (unset GPTOSS_CPU_EXPERTS: measure) against a link far slower than the CPU gives the CPU all but
    one group of each expert; against a link far faster, no share and a note saying why."""
    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.engine.offload import OffloadCosts, with_offload
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict())
    engine = load_random(cfg, device=DEVICE.type, dtype=torch.float32, fast=False, graphs=False, context_length=64)
    off = with_offload(engine.model, 0, [0, 2], cpu_fraction=0.0)  # no share yet (a GPU would start one here)
    off.share_fraction, off.costs = None, OffloadCosts(pcie_bytes_s=1.0, cpu_bytes_s=1.0)
    off.start_share()
    try:
        assert off.share is not None and off.share.alive and off.share.exchange.split == 32 and not off.notes
        assert off.share.bytes_s > 0 and off.share.exchange.flags.tolist() == off.share.exchange.dones.tolist()
    finally:
        off.close()
    off.share = None
    off.costs = OffloadCosts(pcie_bytes_s=1e30, cpu_bytes_s=1.0)
    off.start_share()
    assert off.share is None and off.notes == ["CPU expert share off: this CPU would take under 5% of each expert"]


def test_a_share_that_does_not_answer_at_load_is_turned_off_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """start_share sends one token through the first offloaded layer with and without the team before any decode:
    a team that never answers (as where the GPU and the CPU do not see each other's pinned writes) is closed, and
    decode goes on with the GPU alone."""
    from gptoss_cli.engine import offload as offload_module
    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict())
    engine = load_random(cfg, device=DEVICE.type, dtype=torch.float32, fast=False, graphs=False, context_length=64)
    off = offload_module.with_offload(engine.model, 0, [1], cpu_fraction=0.0)
    off.share_fraction, off.costs = None, offload_module.OffloadCosts(1.0, 1.0)

    def silent(start, *args, **kwargs) -> CpuShare:
        share = start(32)
        share.close()  # the team is gone: nobody serves the exchange
        share.exchange.max_polls = 10
        return share

    monkeypatch.setattr(offload_module, "calibrated", silent)
    off.start_share()
    assert off.share is None
    assert off.notes == ["CPU expert share off: the GPU got no answer from the CPU team (pinned-memory flags not seen)"]


def test_a_share_that_fails_at_load_leaves_no_thread_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while timing the team (here: it raises) closes the team it started and leaves a note."""
    import threading

    from gptoss_cli.engine import offload as offload_module
    from gptoss_cli.engine.generator import load_random
    from gptoss_cli.model.config import GptOssConfig
    from gptoss_cli.model.random_weights import tiny_config_dict

    cfg = GptOssConfig.from_dict(tiny_config_dict())
    engine = load_random(cfg, device=DEVICE.type, dtype=torch.float32, fast=False, graphs=False, context_length=64)
    off = offload_module.with_offload(engine.model, 0, [1], cpu_fraction=0.0)
    off.share_fraction, off.costs = None, offload_module.OffloadCosts(1.0, 1.0)

    def broken(self, *args, **kwargs) -> float:
        raise RuntimeError("the team stalled")

    monkeypatch.setattr(CpuShare, "time_requests", broken)
    off.start_share()
    assert off.share is None and off.notes == ["CPU expert share off: the team stalled"]
    assert not [t for t in threading.enumerate() if t.name.startswith("gptoss-cpu-share") and t.is_alive()]
