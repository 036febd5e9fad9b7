"""Where do the pipelined and stepwise decode loops part, if they do: logits or the draw? (H200 diagnostic)

    python benchmarks/diag_sampling.py [OUT in the environment]

Seeded temperature-1.0 sampling on the peaked random 20b model, 96 tokens after a 300-token prompt, three trials
with fresh CUDA graphs each: the stepwise loop (Engine.step, sample on the host) against the pipelined one written
out by hand (sampling inside the graph), cloning every step's logits. Reports the first token that differs, the
first step whose logits differ, and the largest logit difference before the first differing token.
"""
import json, os, torch, sys
from gptoss_cli.engine.generator import load_random
from gptoss_cli.engine.graphs import DecodeGraphs
from gptoss_cli.engine.sampling import Sampler, SamplingParams
from gptoss_cli.model.config import official_config
eng = load_random(official_config("gpt-oss-20b"), device="cuda", context_length=4096, peaked=True)
prompt = torch.randint(0, 199998, (300,), generator=torch.Generator().manual_seed(3)).tolist()
res = []
for trial in range(3):
    eng.graphs = DecodeGraphs(eng.model, eng.cache)
    # stepwise: logits per step
    s = Sampler(SamplingParams(temperature=1.0, seed=5)); eng.reset(); lg = eng.prefill(prompt)
    want, wl = [], []
    for i in range(96):
        want.append(s(lg)); wl.append(lg.clone())
        if i < 95: lg = eng.step(want[-1])
    # pipelined by hand: same as Engine.decode, cloning each step's logits
    s = Sampler(SamplingParams(temperature=1.0, seed=5)); eng.reset(); lg = eng.prefill(prompt)
    g = eng.graphs
    g.token.copy_(s.pick(lg)); got = [int(g.token)]; gl = [lg.clone()]
    for i in range(95):
        out = eng._graph_step(None, s); gl.append(out[0].clone()); eng.cache.advance(1); got.append(int(g.token))
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    dl = [(wl[i] - gl[i]).abs().max().item() for i in range(96)]
    firstdl = next((i for i, d in enumerate(dl) if d > 0), None)
    # same logits, pick in eager vs the pick the graph made: recompute eager pick at the mismatch with the same u
    res.append({"trial": trial, "first_token_mismatch": first, "first_logit_diff_step": firstdl,
                "max_logit_diff_before_mismatch": max(dl[:first]) if first else max(dl)})
    print(res[-1], flush=True)
open(os.path.join(os.environ.get("OUT", "."), "diag.json"), "w").write(json.dumps(res, indent=1))
