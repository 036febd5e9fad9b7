"""Sampling and the streaming generation loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gptoss_cli
from gptoss_cli.engine.graphs import DecodeGraphs
from gptoss_cli.engine.sampling import Sampler, SamplingParams


@pytest.fixture(scope="module", params=["stepwise", "pipelined"])
def engine(request, tiny_model_dir: Path):
    """Both decode loops: step by step (read each id, then step), and the one CUDA graphs run, which queues the next
    step on the sampled id before reading it (DecodeGraphs runs its body eagerly on the CPU)."""
    eng = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    if request.param == "pipelined":
        eng.graphs = DecodeGraphs(eng.model, eng.cache)
    return eng


def test_greedy_picks_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert Sampler(SamplingParams(temperature=0))(logits) == 1


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top_k = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {top_k(logits) for _ in range(200)} == {0, 1}
    top_p = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=0))  # 0.5 then 0.3 crosses 0.7
    assert {top_p(logits) for _ in range(200)} == {0, 1}
    full = Sampler(SamplingParams(temperature=1.0, seed=0))
    assert {full(logits) for _ in range(400)} == {0, 1, 2, 3}


def test_seed_makes_sampling_reproducible() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = Sampler(SamplingParams(temperature=1.0, seed=42))
    b = Sampler(SamplingParams(temperature=1.0, seed=42))
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]


@pytest.mark.parametrize("params", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1)])
def test_invalid_sampling_params(params) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**params)


def test_greedy_generation_follows_full_forward_argmax(engine) -> None:
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    out = list(engine.generate(prompt, max_new_tokens=20, temperature=0, stop=[]))
    assert len(out) == 20
    logits = engine.logits(prompt + out)
    assert logits[len(prompt) - 1:-1].argmax(-1).tolist() == out
    assert engine.stats.finish_reason == "length" and engine.stats.generated_tokens == 20


def test_generation_stops_on_a_stop_id_and_yields_it(engine) -> None:
    prompt = [9, 10, 11]
    free = list(engine.generate(prompt, max_new_tokens=10, temperature=0, stop=[]))
    stop_at = free[4]
    first = free.index(stop_at)
    out = list(engine.generate(prompt, max_new_tokens=10, temperature=0, stop=[stop_at]))
    assert out == free[: first + 1]
    assert engine.stats.finish_reason == "stop"


def test_same_seed_same_stream(engine) -> None:
    a = list(engine.generate([3, 1, 4], max_new_tokens=15, temperature=1.0, seed=7, stop=[]))
    b = list(engine.generate([3, 1, 4], max_new_tokens=15, temperature=1.0, seed=7, stop=[]))
    assert a == b


def test_stopping_between_tokens_keeps_the_cache_usable(engine) -> None:
    prompt = [20, 21, 22, 23]
    calls = iter(range(100))
    out = list(engine.generate(prompt, max_new_tokens=50, temperature=0, stop=[],
                               should_stop=lambda: next(calls) >= 4))
    assert len(out) == 5 and engine.stats.finish_reason == "cancelled"
    stream = engine.generate(prompt, max_new_tokens=50, temperature=0, stop=[])
    taken = [next(stream) for _ in range(3)]
    stream.close()
    assert taken == out[:3]
    # The next request reuses the cache and still computes the right thing.
    longer = prompt + out
    last = engine.prefill(longer)
    assert engine.stats.reused_tokens >= len(prompt)
    assert (last - engine.logits(longer)[-1]).abs().max().item() <= 1e-4


def test_a_stop_forgets_the_step_queued_after_it(engine) -> None:
    """The pipelined loop has already run the stop token's step when it reads the id; its K/V must not linger
    (a ring slot would hold a second key at that position). Past the window, so the rings have wrapped."""
    prompt = list(range(100, 140))
    free = list(engine.generate(prompt, max_new_tokens=6, temperature=0, stop=[]))
    out = list(engine.generate(prompt, max_new_tokens=6, temperature=0, stop=[free[3]]))
    assert out == free[:free.index(free[3]) + 1] and engine.cache.length == len(prompt) + len(out) - 1
    other = (out[-1] + 1) % engine.config.vocab_size
    longer = prompt + out[:-1] + [other, 7, 8]
    last = engine.prefill(longer)
    assert engine.stats.reused_tokens == len(prompt) + len(out) - 1
    assert (last - engine.logits(longer)[-1]).abs().max().item() <= 1e-4


def test_interrupt_inside_a_forward_leaves_the_cache_exact(engine, monkeypatch) -> None:
    prompt = list(range(40, 90))
    engine.prefill(prompt)
    model = engine.model
    real = model.attention_block
    count = {"n": 0}

    def flaky(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 2:  # after layer 0 wrote its ring, before the others did
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "attention_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        engine.step(5)
    monkeypatch.setattr(model, "attention_block", real)
    assert engine.cache.length == len(engine.tokens)
    last = engine.prefill(prompt + [5, 6])
    assert (last - engine.logits(prompt + [5, 6])[-1]).abs().max().item() <= 1e-4


def test_context_overflow_is_a_clear_error(tiny_model_dir: Path) -> None:
    from gptoss_cli.errors import ContextLengthError

    small = gptoss_cli.load(tiny_model_dir, device="cpu", context_length=32)
    with pytest.raises(ContextLengthError, match="context holds 32"):
        small.prefill(list(range(40)))


def test_out_of_vocabulary_id_is_rejected(engine) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.logits([1, 5000])


def test_stop_ids_come_from_generation_config(engine) -> None:
    assert {200002, 200012, 199999} <= set(engine.stop_ids)


def test_scripted_engine_accounts_prefix_reuse_like_the_real_one(engine) -> None:
    from gptoss_cli.engine.scripted import ScriptedEngine

    prompt = [30, 31, 32, 33]
    real_out = list(engine.generate(prompt, max_new_tokens=6, temperature=0, stop=[]))
    scripted = ScriptedEngine(responses=[list(real_out), [7, 8]])
    assert list(scripted.generate(prompt, max_new_tokens=6, stop=[])) == real_out
    follow_up = prompt + real_out + [40, 41]
    list(engine.generate(follow_up, max_new_tokens=2, temperature=0, stop=[]))
    list(scripted.generate(follow_up, max_new_tokens=2, stop=[]))
    assert scripted.stats.reused_tokens == engine.stats.reused_tokens == len(prompt) + len(real_out) - 1
    assert scripted.prompts == [prompt, follow_up]


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3))
    draws = torch.tensor([sampler(torch.log(probs)) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[1] == 0  # a token of probability zero is never drawn
    assert (freq - probs).abs().max() < 0.03


def test_both_decode_loops_sample_the_same_stream(tiny_model_dir: Path) -> None:
    """One seed, one stream: the pipelined loop draws the same uniform numbers in the same order (into the graph's
    input) as the stepwise one, so temperature / top-p / top-k sampling gives the same ids."""
    stepwise = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    pipelined = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    pipelined.graphs = DecodeGraphs(pipelined.model, pipelined.cache)
    for params in (dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.3, top_k=20)):
        a = list(stepwise.generate([5, 6, 7], max_new_tokens=24, seed=11, stop=[], **params))
        b = list(pipelined.generate([5, 6, 7], max_new_tokens=24, seed=11, stop=[], **params))
        assert a == b and len(set(a)) > 3


def test_a_step_samples_only_where_the_graph_embeds_and_projects(tiny_model_dir: Path) -> None:
    """With the embedding table in RAM the next id cannot stay on the device: such a graph refuses to sample, and
    the engine's decode falls back to reading each id (same ids)."""
    from gptoss_cli.engine.sampling import Sampler, SamplingParams

    eng = gptoss_cli.load(tiny_model_dir, device="cpu", dtype=torch.float32)
    want = list(eng.generate([1, 2, 3], max_new_tokens=6, temperature=0, stop=[]))
    graphs = DecodeGraphs(eng.model, eng.cache)
    graphs.embed_inside = False  # as when the plan keeps the table in RAM on a CUDA device
    eng.graphs = graphs
    with pytest.raises(ValueError, match="embedding and lm_head on the GPU"):
        graphs.step(None, 0, Sampler(SamplingParams(temperature=0)))
    assert list(eng.generate([1, 2, 3], max_new_tokens=6, temperature=0, stop=[])) == want


def test_pick_writes_into_the_given_tensor() -> None:
    """A CUDA-graph step samples into its own input id: greedy writes it directly, sampling copies it; the id is
    the same as without ``out``, for the same seed."""
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_p=0.9, seed=5)):
        out = torch.full((1,), -1, dtype=torch.long)
        want = Sampler(params).pick(logits)
        got = Sampler(params).pick(logits, out=out)
        assert got is out and torch.equal(out, want)
