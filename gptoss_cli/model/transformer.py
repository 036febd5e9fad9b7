"""gpt-oss in plain PyTorch: the whole model math in one file, runnable on CPU and CUDA.

Follows specs/gpt-oss-model.md §4 (OpenAI's torch reference is canonical): pre-norm blocks, GQA attention with
per-head sinks and a sliding window on the layers ``layer_types`` marks, YaRN RoPE (NeoX half-split, unrounded
correction range, concentration on cos and sin), a top-k-then-softmax router and a clamped SwiGLU over
interleaved gate/up rows. Experts stay MXFP4-packed; this reference path decodes only the experts a token uses.

Shapes: T tokens (batch 1), H hidden, Hq/Hkv query/key-value heads, D head dim, E experts, I expert width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptoss_kernels import mxfp4

from .cache import KVCache
from .config import GptOssConfig


@dataclass
class Int8Weight:
    """Weight-only int8 (the plan's quantised option): per-output-row symmetric, ``w ~= q * scale[:, None]``."""

    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # fp32 [N]

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "Int8Weight":
        """scale = max|row| / 127, q = round(w / scale): the rule of gptoss_kernels.int8.quantize_int8, written
        here too so the torch path quantizes without importing Triton (a failed Triton install must not matter)."""
        wf = w.float()
        amax = wf.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        return cls(torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8), scale)


Weight = torch.Tensor | Int8Weight


@dataclass
class Layer:
    attn_norm: torch.Tensor  # [H] fp32
    qkv_w: Weight  # [(Hq + 2*Hkv)*D, H]: q, k and v projections stacked (one matrix-vector product in decode)
    qkv_b: torch.Tensor | None
    o_w: Weight  # [H, Hq*D]
    o_b: torch.Tensor | None
    sinks: torch.Tensor  # [Hq] fp32
    mlp_norm: torch.Tensor  # [H] fp32
    router_w: torch.Tensor  # [E, H]
    router_b: torch.Tensor  # [E]
    # [E, 2I, H/32, 16] uint8; rows interleave gate (even) and up (odd). On the fast path, experts kept on the GPU
    # are int32 [E, 2I, H/32, 4] in the paired layout (kernels/mxfp4.py; model/fast.py pair_experts), down too.
    gate_up_blocks: torch.Tensor
    gate_up_scales: torch.Tensor  # [E, 2I, H/32] uint8
    gate_up_bias: torch.Tensor  # [E, 2I]
    down_blocks: torch.Tensor  # [E, H, I/32, 16] uint8
    down_scales: torch.Tensor  # [E, H, I/32] uint8
    down_bias: torch.Tensor  # [E, H]
    sliding: bool


def linear(x: torch.Tensor, w: Weight, b: torch.Tensor | None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x @ w.T + b; an int8 weight is dequantized on the fly (the fast path reads int8 directly). ``out_dtype``:
    the result's dtype (here x's dtype, then converted; the fast path writes it from its fp32 sums)."""
    if isinstance(w, Int8Weight):
        w = (w.q.float() * w.scale.float()[:, None]).to(x.dtype)
    y = F.linear(x, w, b)
    return y if out_dtype is None else y.to(out_dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Statistics and the weight multiply in fp32, result in the activation dtype."""
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)
    return (t * weight).to(x.dtype)


def yarn_inv_freq(cfg: GptOssConfig) -> tuple[torch.Tensor, float]:
    """Per-frequency inverse wavelengths and the YaRN concentration (attention factor)."""
    rs, d_half = cfg.rope_scaling, cfg.head_dim // 2
    freq = cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    concentration = 0.1 * math.log(rs.factor) + 1.0
    ctx = rs.original_max_position_embeddings

    def correction(rotations: float) -> float:
        return d_half * math.log(ctx / (rotations * 2 * math.pi)) / math.log(cfg.rope_theta)

    low, high = correction(rs.beta_fast), correction(rs.beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    # YaRN's own range clamp; a no-op for the official shapes (8.09, 17.40) but not for small test shapes.
    low, high = max(low, 0.0), min(high, d_half - 1.0)
    if low == high:
        high += 0.001
    ramp = (torch.arange(d_half, dtype=torch.float32) - low) / (high - low)
    extrapolate = 1 - ramp.clamp(0, 1)
    inv_freq = (1.0 / (rs.factor * freq)) * (1 - extrapolate) + (1.0 / freq) * extrapolate
    return inv_freq, concentration


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D]; cos/sin [T, D/2]. Half-split (NeoX) rotation."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
              k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
    """q [T,Hq,D], k/v [S,Hkv,D] -> [T, Hq*D]. Key j is visible to query i when 0 <= k_pos[j] <= q_pos[i] and,
    on sliding layers, q_pos[i] - k_pos[j] < window. The sink logit joins only the softmax denominator."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    qf = q.float().view(T, Hkv, Hq // Hkv, D)
    scores = torch.einsum("tkgd,skd->kgts", qf, k.float()) * sm_scale
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if window is not None:
        visible &= (q_pos[:, None] - k_pos[None, :]) < window
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = sinks.float().view(Hkv, Hq // Hkv, 1, 1).expand(-1, -1, T, 1)
    probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    out = torch.einsum("kgts,skd->tkgd", probs, v.float())
    return out.reshape(T, Hq * D).to(q.dtype)


def swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU over interleaved rows: gate clamped above only, up both sides, and the +1 on up."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe(x: torch.Tensor, layer: Layer, cfg: GptOssConfig) -> torch.Tensor:
    """x [T, H] -> [T, H]: top-k experts per token, softmax over their k router logits, weighted sum.

    Experts the plan keeps in RAM are copied over packed (a few MB each) and decoded on the compute device."""
    router_logits = F.linear(x, layer.router_w, layer.router_b)
    top_vals, top_idx = torch.topk(router_logits, cfg.num_experts_per_tok, dim=-1, sorted=True)
    weights = torch.softmax(top_vals.float(), dim=-1)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in top_idx.unique().tolist():
        tok, slot = torch.where(top_idx == e)
        w_gate_up = mxfp4.dequantize(layer.gate_up_blocks[e].to(x.device), layer.gate_up_scales[e].to(x.device),
                                     x.dtype)
        h = swiglu(F.linear(x[tok], w_gate_up, layer.gate_up_bias[e].to(x.device)), cfg.swiglu_alpha,
                   cfg.swiglu_limit)
        w_down = mxfp4.dequantize(layer.down_blocks[e].to(x.device), layer.down_scales[e].to(x.device), x.dtype)
        y = F.linear(h, w_down, layer.down_bias[e].to(x.device))
        out.index_add_(0, tok, y.float() * weights[tok, slot, None])
    return out.to(x.dtype)


@dataclass(frozen=True)
class Ops:
    """The model's kernels: the plain-torch reference here, or the Triton fast path (model/fast.py)."""

    name: str
    linear: Callable[..., torch.Tensor]  # (x, w, b, out_dtype=None)
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    attention: Callable[..., torch.Tensor]
    moe: Callable[[torch.Tensor, Layer, GptOssConfig], torch.Tensor]
    graph_safe: bool = False  # no host synchronisation inside a decode step (CUDA graphs can capture it)
    # A fused one-token step (model, x [1, H], positions [1], cache, kv_len) -> final-normed hidden [1, H], for
    # the CUDA-graph decode; None: the graph replays layers_forward.
    decode_step: Callable[..., torch.Tensor] | None = None


REFERENCE_OPS = Ops("reference", linear, rms_norm, attention, moe)


class GptOss:
    """The model as tensors plus a forward; placement and precision are decided by whoever builds it."""

    def __init__(self, cfg: GptOssConfig, layers: list[Layer], embedding: torch.Tensor, norm: torch.Tensor,
                 lm_head: Weight, device: torch.device, dtype: torch.dtype, ops: Ops = REFERENCE_OPS) -> None:
        self.cfg, self.layers, self.embedding, self.norm, self.lm_head = cfg, layers, embedding, norm, lm_head
        self.device, self.dtype, self.ops = device, dtype, ops
        inv_freq, self.concentration = yarn_inv_freq(cfg)
        self.inv_freq = inv_freq.to(device)
        self.sm_scale = 1.0 / math.sqrt(cfg.head_dim)

    @classmethod
    def from_tensors(cls, cfg: GptOssConfig, tensors: dict[str, torch.Tensor], device: torch.device,
                     dtype: torch.dtype, attn_int8: bool = False, lm_head_int8: bool = False,
                     ops: Ops = REFERENCE_OPS, lm_head_device: torch.device | None = None) -> "GptOss":
        """Build from hub-named tensors; norms and sinks are kept in fp32. Attention and lm_head weights are
        quantized to int8 where asked (wherever they were loaded); the results go to ``device``, an int8 lm_head
        to ``lm_head_device`` when the plan keeps it in RAM."""

        def get(name: str) -> torch.Tensor:
            return tensors.pop(name)

        def maybe(name: str) -> torch.Tensor | None:
            return tensors.pop(name, None)

        def weight(w: torch.Tensor, int8: bool, to: torch.device = device) -> Weight:
            if not int8:
                return w.to(to)
            q = Int8Weight.quantize(w)
            return Int8Weight(q.q.to(to), q.scale.to(to))

        def stacked(*names: str) -> torch.Tensor | None:
            parts = [maybe(n) for n in names]
            return None if any(p is None for p in parts) else torch.cat([p.to(device) for p in parts])

        layers = []
        for n in range(cfg.num_hidden_layers):
            p = f"model.layers.{n}."
            qkv = [p + f"self_attn.{m}_proj" for m in "qkv"]
            layers.append(Layer(
                attn_norm=get(p + "input_layernorm.weight").float(),
                qkv_w=weight(torch.cat([get(m + ".weight") for m in qkv]), attn_int8),
                qkv_b=stacked(*(m + ".bias" for m in qkv)),
                o_w=weight(get(p + "self_attn.o_proj.weight"), attn_int8),
                o_b=maybe(p + "self_attn.o_proj.bias"),
                sinks=get(p + "self_attn.sinks").float(),
                mlp_norm=get(p + "post_attention_layernorm.weight").float(),
                router_w=get(p + "mlp.router.weight"), router_b=get(p + "mlp.router.bias"),
                gate_up_blocks=get(p + "mlp.experts.gate_up_proj_blocks"),
                gate_up_scales=get(p + "mlp.experts.gate_up_proj_scales"),
                gate_up_bias=get(p + "mlp.experts.gate_up_proj_bias"),
                down_blocks=get(p + "mlp.experts.down_proj_blocks"),
                down_scales=get(p + "mlp.experts.down_proj_scales"),
                down_bias=get(p + "mlp.experts.down_proj_bias"),
                sliding=cfg.is_sliding(n),
            ))
        embedding = get("model.embed_tokens.weight")
        lm_head = embedding if cfg.tie_word_embeddings else get("lm_head.weight")
        if lm_head_int8:
            lm_head = weight(lm_head, True, lm_head_device or device)
        return cls(cfg, layers, embedding, get("model.norm.weight").float(), lm_head, device, dtype, ops)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        return freqs.cos() * self.concentration, freqs.sin() * self.concentration

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """A row lookup where the table lives (it may stay in RAM), then onto the compute device."""
        return self.embedding[ids.to(self.embedding.device)].to(self.device, self.dtype)

    def attention_block(self, x: torch.Tensor, layer: Layer, index: int, update: Callable[..., tuple],
                        positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg, ops, T = self.cfg, self.ops, x.shape[0]
        t = ops.rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
        qkv = ops.linear(t, layer.qkv_w, layer.qkv_b)
        q, k, v = qkv.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim], dim=-1)
        q = apply_rope(q.view(T, cfg.num_attention_heads, cfg.head_dim), cos, sin)
        k = apply_rope(k.view(T, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
        v = v.reshape(T, cfg.num_key_value_heads, cfg.head_dim)
        keys, values, k_pos = update(index, k, v, positions)
        window = cfg.sliding_window if layer.sliding else None
        o = ops.attention(q, keys, values, layer.sinks, positions, k_pos, self.sm_scale, window)
        return x + ops.linear(o, layer.o_w, layer.o_b)

    def forward(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run ``ids`` (the next T tokens after ``cache.length``) and return final-normed hidden states [T, H]."""
        T = ids.shape[0]
        cache.check_room(T)
        positions = torch.arange(cache.length, cache.length + T, device=self.device)
        hidden = self.layers_forward(self.embed(ids), positions, cache.update)
        cache.advance(T)
        return hidden

    def layers_forward(self, x: torch.Tensor, positions: torch.Tensor, update: Callable[..., tuple]) -> torch.Tensor:
        """The transformer stack over embedded ``x`` at ``positions``; ``update`` stores K/V and returns what
        the queries attend over (``KVCache.update``, or its static twin inside a CUDA graph)."""
        ops, eps = self.ops, self.cfg.rms_norm_eps
        cos, sin = self.rope(positions)
        for index, layer in enumerate(self.layers):
            x = self.attention_block(x, layer, index, update, positions, cos, sin)
            x = x + ops.moe(ops.rms_norm(x, layer.mlp_norm, eps), layer, self.cfg)
        return ops.rms_norm(x, self.norm, eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, H] -> float32 [T, vocab], computed where lm_head lives (the plan may keep it in RAM)."""
        w = self.lm_head
        where = w.q.device if isinstance(w, Int8Weight) else w.device
        ops = self.ops if where == self.device else REFERENCE_OPS
        return ops.linear(hidden.to(where), w, None, torch.float32)
