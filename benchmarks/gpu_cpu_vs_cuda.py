"""Where does the reference path on CUDA part from the same path on the CPU? Layer-by-layer diffs (fp32)."""

from __future__ import annotations

import torch

import gptoss_cli
from gptoss_cli.model import transformer as T
from gptoss_cli.model.cache import KVCache
from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

torch.backends.cuda.matmul.allow_tf32 = False
d = write_checkpoint("/tmp/cc", tiny_config_dict(), seed=1)
ids = torch.randint(0, 1024, (600,), generator=torch.Generator().manual_seed(0))
runs = {}
for dev in ("cpu", "cuda"):
    e = gptoss_cli.load(d, device=dev, dtype=torch.float32, fast=False)
    m = e.model
    cache = KVCache(m.cfg, 600, m.device, torch.float32)
    pos = torch.arange(600, device=m.device)
    cos, sin = m.rope(pos)
    x = m.embed(ids.to(m.device))
    trace = [("embed", x.cpu()), ("cos", cos.cpu())]
    for i, layer in enumerate(m.layers):
        x = m.attention_block(x, layer, i, cache.update, pos, cos, sin)
        trace.append((f"attn{i}", x.cpu()))
        t = T.rms_norm(x, layer.mlp_norm, 1e-5)
        logits = torch.nn.functional.linear(t, layer.router_w, layer.router_b)
        trace.append((f"router{i}", logits.topk(2).indices.cpu().float()))
        x = x + T.moe(t, layer, m.cfg)
        trace.append((f"moe{i}", x.cpu()))
    runs[dev] = trace
for (name, a), (_, b) in zip(runs["cpu"], runs["cuda"]):
    diff = (a - b).abs()
    print(f"{name:<10} max {diff.max().item():.3e}  mean {diff.mean().item():.3e}  rows>1e-3 {(diff.amax(-1) > 1e-3).sum().item()}")
