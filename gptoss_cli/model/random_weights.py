"""Random-weight gpt-oss checkpoints in the exact hub layout, at any shape.

Tests write tiny ones to disk and compare against transformers; benchmarks build the real 20b/120b shapes in
memory on the GPU. Experts go through the real MXFP4 quantizer (``gptoss_kernels.mxfp4.quantize``), so the packed
bytes are what a real checkpoint would hold for those dense weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gptoss_kernels import mxfp4

from .config import FULL, SLIDING, GptOssConfig

GENERATION_CONFIG = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012],
                     "pad_token_id": 199999}


# The peaked model (``peaked=True``; see ``random_tensors``).
PEAKED_ROUTER = 2.0  # router weight and bias scale: the top-4-of-32 weights average about .60/.21/.12/.07
PEAKED_ATTN_OUT = 1.67  # attention output (o_proj) scale times sqrt(layers): ~30% of the last residual's norm
PEAKED_MOE_OUT = 0.69  # expert down_proj scale times sqrt(layers): ~40% of the last residual's norm
PEAKED_COS = 0.85  # cosine of the last residual to the current token's embedding that those scales give
PEAKED_TOP1 = 0.7  # the top-1 probability the lm_head gain aims at (trained-model-like)


def successor(cfg: GptOssConfig, seed: int = 0) -> torch.Tensor:
    """The peaked model's bigram map: after token ``t`` it predicts ``successor(cfg, seed)[t]`` (a random
    permutation, from its own CPU generator so that it can be had without building the weights)."""
    return torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(seed + 0x5EED))


def peaked_head_gain(cfg: GptOssConfig, cos: float = PEAKED_COS, top1: float = PEAKED_TOP1) -> float:
    """The gain g of the peaked lm_head (row ``successor[t]`` = ``g / H * embedding[t]``).

    The final hidden state has norm about sqrt(H) and cosine ``cos`` to the current token's embedding (norm
    about sqrt(H)), so the successor's logit is about ``g * cos`` and each of the other V - 1 logits is about
    N(0, g**2 / H), whose softmax mass is (V - 1) * exp(g**2 / (2 H)). Solving
    ``g * cos - g**2 / (2 H) = ln(V - 1) + ln(top1 / (1 - top1))`` for the smaller root puts the successor's
    probability near ``top1``: g is about 15.4 at gpt-oss's H = 2880, V = 201088 and 10.1 at the tiny test shape.
    """
    H, V = cfg.hidden_size, cfg.vocab_size
    rhs = math.log(V - 1) + math.log(top1 / (1 - top1))
    disc = cos * cos - 2 * rhs / H
    if disc <= 0:  # too few dimensions for that confidence: the gain of the largest reachable margin
        return cos * H
    return H * (cos - math.sqrt(disc))


def config_dict(
    *,
    vocab_size: int = 201088,
    hidden_size: int = 2880,
    num_hidden_layers: int = 24,
    num_attention_heads: int = 64,
    num_key_value_heads: int = 8,
    head_dim: int = 64,
    num_local_experts: int = 32,
    num_experts_per_tok: int = 4,
    intermediate_size: int = 2880,
    sliding_window: int = 128,
    original_max_position_embeddings: int = 4096,
    rope_factor: float = 32.0,
    rope_theta: float = 150000.0,
) -> dict[str, Any]:
    """A ``config.json`` in the hub's layout (defaults: gpt-oss-20b)."""
    full_vocab = vocab_size > 200012  # small test vocabularies cannot hold the special ids
    return {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002 if full_vocab else None,
        "experts_per_token": num_experts_per_tok,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initial_context_length": original_max_position_embeddings,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_types": [SLIDING if i % 2 == 0 else FULL for i in range(num_hidden_layers)],
        "max_position_embeddings": int(original_max_position_embeddings * rope_factor),
        "model_type": "gpt_oss",
        "num_attention_heads": num_attention_heads,
        "num_experts_per_tok": num_experts_per_tok,
        "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads,
        "num_local_experts": num_local_experts,
        "output_router_logits": False,
        "pad_token_id": 199999 if full_vocab else None,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": rope_factor,
                         "original_max_position_embeddings": original_max_position_embeddings,
                         "rope_type": "yarn", "truncate": False},
        "rope_theta": rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "transformers_version": "4.55.0.dev0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def tiny_config_dict(**overrides: Any) -> dict[str, Any]:
    """A shape that runs in milliseconds on a CPU yet exercises every feature (GQA, window, YaRN, top-k)."""
    shape = dict(vocab_size=1024, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, num_local_experts=5, num_experts_per_tok=2, intermediate_size=96, sliding_window=16,
                 original_max_position_embeddings=256, rope_factor=8.0)
    shape.update(overrides)
    return config_dict(**shape)


def _tensor_names(cfg: GptOssConfig, layer: int) -> list[str]:
    p = f"model.layers.{layer}."
    names = [p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "self_attn.sinks"]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        names += [p + f"self_attn.{proj}.weight", p + f"self_attn.{proj}.bias"]
    names += [p + "mlp.router.weight", p + "mlp.router.bias"]
    for proj in ("gate_up_proj", "down_proj"):
        names += [p + f"mlp.experts.{proj}_blocks", p + f"mlp.experts.{proj}_scales", p + f"mlp.experts.{proj}_bias"]
    return names


def layer_tensors(cfg: GptOssConfig, layer: int, gen: torch.Generator, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.bfloat16, peaked: bool = False) -> dict[str, torch.Tensor]:
    """One layer's tensors. Scales keep activations O(1), exercise the SwiGLU clamp, and keep each layer's update
    to the residual stream modest. ``peaked``: the same draws with the router scaled by ``PEAKED_ROUTER`` and the
    attention/expert output projections by ``PEAKED_ATTN_OUT``/``PEAKED_MOE_OUT`` over sqrt(layers) (see
    ``random_tensors``)."""
    H, E, I = cfg.hidden_size, cfg.num_local_experts, cfg.intermediate_size
    router, attn_out, moe_out = 1.0, 1.0, 1.0
    if peaked:  # the sum of the layers' updates grows as sqrt(layers): scale each by 1/sqrt(layers)
        depth = cfg.num_hidden_layers**-0.5
        router, attn_out, moe_out = PEAKED_ROUTER, PEAKED_ATTN_OUT * depth, PEAKED_MOE_OUT * depth

    def randn(*shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * std + mean).to(dtype)

    p = f"model.layers.{layer}."
    out = {
        p + "input_layernorm.weight": randn(H, std=0.1, mean=1.0),
        p + "post_attention_layernorm.weight": randn(H, std=0.1, mean=1.0),
        p + "self_attn.sinks": randn(cfg.num_attention_heads, std=1.0),
        p + "self_attn.q_proj.weight": randn(cfg.q_dim, H, std=H**-0.5),
        p + "self_attn.q_proj.bias": randn(cfg.q_dim, std=0.1),
        p + "self_attn.k_proj.weight": randn(cfg.kv_dim, H, std=H**-0.5),
        p + "self_attn.k_proj.bias": randn(cfg.kv_dim, std=0.1),
        p + "self_attn.v_proj.weight": randn(cfg.kv_dim, H, std=H**-0.5),
        p + "self_attn.v_proj.bias": randn(cfg.kv_dim, std=0.1),
        p + "self_attn.o_proj.weight": randn(H, cfg.q_dim, std=0.5 * cfg.q_dim**-0.5 * attn_out),
        p + "self_attn.o_proj.bias": randn(H, std=0.1 * attn_out),
        p + "mlp.router.weight": randn(E, H, std=H**-0.5 * router),
        p + "mlp.router.bias": randn(E, std=1.0 * router),
        p + "mlp.experts.gate_up_proj_bias": randn(E, 2 * I, std=1.0),
        p + "mlp.experts.down_proj_bias": randn(E, H, std=0.1 * moe_out),
    }
    # Each layer adds a modest update to the residual stream, as in a trained model; with O(1) updates a random
    # 24-layer model turns chaotic and bf16 rounding alone flips its routing (useless for comparing paths).
    for proj, rows, cols, std in (("gate_up_proj", 2 * I, H, 2.0 * H**-0.5),
                                  ("down_proj", H, I, 0.25 * I**-0.5 * moe_out)):
        blocks = torch.empty(E, rows, cols // 32, 16, dtype=torch.uint8, device=device)
        scales = torch.empty(E, rows, cols // 32, dtype=torch.uint8, device=device)
        for e in range(E):  # one expert at a time keeps the quantizer's temporaries small at full size
            dense = torch.randn(rows, cols, generator=gen, device=device) * std
            blocks[e], scales[e] = mxfp4.quantize(dense)
        out[p + f"mlp.experts.{proj}_blocks"] = blocks
        out[p + f"mlp.experts.{proj}_scales"] = scales
    return out


def global_tensors(cfg: GptOssConfig, gen: torch.Generator, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.bfloat16, peaked: bool = False,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Embedding, final norm and lm_head. ``peaked``: lm_head row ``successor[t]`` is ``gain / H`` times the
    embedding of ``t`` (see ``random_tensors``), instead of a random row."""
    V, H = cfg.vocab_size, cfg.hidden_size
    embedding = torch.randn(V, H, generator=gen, device=device)
    if peaked:
        lm_head = torch.empty_like(embedding)
        lm_head[successor(cfg, seed).to(embedding.device)] = embedding
        lm_head = lm_head.mul_(peaked_head_gain(cfg) / H).to(dtype)
    embedding = embedding.to(dtype)
    norm = (torch.randn(H, generator=gen, device=device) * 0.1 + 1.0).to(dtype)
    if not peaked:
        lm_head = (torch.randn(V, H, generator=gen, device=device) * H**-0.5).to(dtype)
    return {"model.embed_tokens.weight": embedding, "model.norm.weight": norm, "lm_head.weight": lm_head}


def random_tensors(cfg: GptOssConfig, seed: int = 0, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.bfloat16, peaked: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """All tensors of a random checkpoint, layer by layer (so a caller can place each before the next is made).

    ``peaked=False`` (the default) is the plain random model: at 24 layers it is chaotic and its lm_head's
    201k random rows leave the top logits near-tied, so bf16 rounding alone changes its top-1 on ~40% of
    positions (ref bf16 vs ref fp32 on an H200: 60% agreement) and top-1 agreement there measures chaos, not
    kernels. ``peaked=True`` is a better-conditioned model at the same shapes, names and dtypes, confident the
    way a trained model is, for comparing paths by teacher-forced top-1 agreement:

    * a successor bigram model: lm_head row ``successor(cfg, seed)[t]`` = ``g / H * embedding[t]`` (a fixed
      random permutation; g from ``peaked_head_gain``), so after token t the fp32 model predicts successor[t]
      with probability ~0.6-0.8, the other tokens sharing the rest (mean top-1 probability over random tokens:
      0.76 at the 20b shape with narrow experts, 0.78 at hidden 512, both 24 layers and 201k tokens; 0.62 at
      the tiny test shape), and bf16 keeps every top-1 there;
    * every layer still contributes: attention and expert outputs are scaled by ``PEAKED_ATTN_OUT`` and
      ``PEAKED_MOE_OUT`` over sqrt(layers) (the layers' updates add up like a random walk), so at the last layer
      the sum of the attention updates is ~30% and of the MoE updates ~40% of the residual stream's norm (~50%
      together; in the plain model they are ~95% of it, which is what makes it chaotic); removing either one
      moves the logits by ~20x the ref bf16-vs-fp32 difference and the top-1 probability by ~0.1-0.15;
    * the router is scaled by ``PEAKED_ROUTER``: the top-4-of-32 weights average ~.60/.21/.12/.07 instead of
      ~.44/.25/.18/.14. bf16 rounding still flips the k-th choice (near-tied with the next) for ~3% of
      (token, layer) pairs (the plain model: ~20%, chaos included), but such a flip now swaps an expert that
      carries ~7% of the weight, so it moves the output little.

    Everything else (draw order, the MXFP4 quantizer, norms, sinks, biases) is as in the plain model. With a
    201k vocabulary the successor leads the next logit by ~9-12 logits, so removing a whole layer type does
    not change the top-1 either: top-1 agreement on this model shows that paths agree where the model is sure,
    and the logit differences (max/mean |diff| against the ref bf16-vs-fp32 floor) and the top-1 probability
    are what expose a kernel error of the size of a layer's update.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    for layer in range(cfg.num_hidden_layers):
        yield from layer_tensors(cfg, layer, gen, device, dtype, peaked).items()
    yield from global_tensors(cfg, gen, device, dtype, peaked, seed).items()


def write_checkpoint(out_dir: str | Path, config: dict[str, Any] | None = None, *, seed: int = 0,
                     shards: int = 2, device: torch.device | str = "cpu", peaked: bool = False) -> Path:
    """Write ``config.json``, ``generation_config.json``, sharded safetensors and their index to ``out_dir``.

    Shards are named as the official repos name them (0-based, ``model-00000-of-00002`` ... with the last index in
    the name); layers are spread over all but the last shard, which holds the embedding, final norm and lm_head.
    ``device="cuda"`` draws and quantizes on the GPU (minutes become seconds at the full 20b/120b shapes).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = config if config is not None else tiny_config_dict()
    cfg = GptOssConfig.from_dict(raw)
    shards = max(1, min(shards, cfg.num_hidden_layers + 1))
    names = [f"model-{i:05d}-of-{shards - 1:05d}.safetensors" for i in range(shards)]
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    layer_shards = max(1, shards - 1)
    per_shard = -(-cfg.num_hidden_layers // layer_shards)
    for s in range(shards):
        tensors: dict[str, torch.Tensor] = {}
        if s < layer_shards:
            for layer in range(s * per_shard, min((s + 1) * per_shard, cfg.num_hidden_layers)):
                tensors.update(layer_tensors(cfg, layer, gen, device, peaked=peaked))
        if s == shards - 1:
            tensors.update(global_tensors(cfg, gen, device, peaked=peaked, seed=seed))
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(out / names[s]), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = names[s]
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    return out


def expected_tensor_names(cfg: GptOssConfig) -> list[str]:
    names = [n for layer in range(cfg.num_hidden_layers) for n in _tensor_names(cfg, layer)]
    return names + ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
