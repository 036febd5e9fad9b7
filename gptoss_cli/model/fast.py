"""The Triton fast path: the same ``Ops`` as the reference in transformer.py, served by ``gptoss_kernels``.

Chosen for CUDA devices when Triton imports; anything the kernels cannot take (experts the plan keeps in RAM, a
head dim that is not a power of two) falls back to the reference for that call, so the fast path never refuses a
model the reference runs.
"""

from __future__ import annotations

import os
from functools import partial

import torch

from . import transformer as ref
from .cache import KVCache
from .config import GptOssConfig
from .transformer import GptOss, Int8Weight, Layer, Ops, Weight


def triton_available() -> tuple[bool, str]:
    """Whether the Triton kernels can run here, and if not, why (for `gptoss doctor` and the load message)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # an import can fail in many ways on a broken install
        return False, f"Triton is not importable ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, "the kernels need compute capability 8.0 or newer (RTX 30 series and later)"
    return True, "ok"


def kernels_run_on(device: torch.device) -> bool:
    """Whether the Triton kernels take tensors on ``device``: a CUDA device, or any under Triton's CPU interpreter
    (how CI tests this path)."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _on_kernels(x: torch.Tensor) -> bool:
    return kernels_run_on(x.device)


def experts_reachable(blocks: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the Triton MoE can read these expert weights for ``x``: on x's device, or, for a decode-sized ``x``
    on a CUDA device, in pinned host RAM, read in place over PCIe (zero-copy: only the routed experts' bytes cross,
    with no staging copy and no host synchronisation, so an offloaded layer's decode stays inside the CUDA graph)."""
    if blocks.device == x.device:
        return True
    from gptoss_kernels.moe import DECODE_MAX_TOKENS

    return x.is_cuda and x.shape[0] <= DECODE_MAX_TOKENS and blocks.is_pinned()


def pair_experts(model: GptOss) -> int:
    """Re-lay the experts kept on the model's device in the paired layout (kernels/mxfp4.py), in place: the decode
    GEMVs then build each fp16 pair of codes with 11 instead of 15 instructions a word (measured on an H200: the
    20b decode step 1,343 -> 1,286 us with int8 attention). Experts in host RAM keep the checkpoint layout, which
    the CPU share and the PCIe copies read. Returns how many layers were re-laid."""
    from gptoss_kernels import mxfp4

    count = 0
    for layer in model.layers:
        if layer.gate_up_blocks.device == model.device and layer.gate_up_blocks.dtype == torch.uint8:
            layer.gate_up_blocks = mxfp4.to_paired_(layer.gate_up_blocks)
            layer.down_blocks = mxfp4.to_paired_(layer.down_blocks)
            count += 1
    return count


def fast_ops() -> Ops:
    from gptoss_kernels import attention as attn_kernels
    from gptoss_kernels import gemv as gemv_kernels
    from gptoss_kernels import int8 as int8_kernels
    from gptoss_kernels import moe as moe_kernels
    from gptoss_kernels import norm as norm_kernels

    def linear(x: torch.Tensor, w: Weight, b: torch.Tensor | None,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
        if isinstance(w, Int8Weight):
            if w.q.device != x.device:
                return ref.linear(x, w, b, out_dtype)
            return int8_kernels.linear_int8(x, w.q, w.scale, b, out_dtype)
        return gemv_kernels.linear(x, w, b, out_dtype)

    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not _on_kernels(x):
            return ref.rms_norm(x, weight, eps)
        return norm_kernels.rms_norm(x.contiguous(), weight, eps)

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, q_pos: torch.Tensor,
                  k_pos: torch.Tensor, sm_scale: float, window: int | None) -> torch.Tensor:
        D = q.shape[-1]
        if not _on_kernels(q) or D < 16 or D & (D - 1):
            return ref.attention(q, k, v, sinks, q_pos, k_pos, sm_scale, window)
        return attn_kernels.attention(q.contiguous(), k, v, sinks, q_pos, k_pos, sm_scale, window)

    def moe(x: torch.Tensor, layer: Layer, cfg: GptOssConfig) -> torch.Tensor:
        if not _on_kernels(x) or not experts_reachable(layer.gate_up_blocks, x):
            return ref.moe(x, layer, cfg)
        return moe_kernels.moe(x, layer.router_w, layer.router_b, layer.gate_up_blocks, layer.gate_up_scales,
                               layer.gate_up_bias, layer.down_blocks, layer.down_scales, layer.down_bias,
                               cfg.num_experts_per_tok, cfg.swiglu_alpha, cfg.swiglu_limit)

    return Ops("triton", linear, rms_norm, attention, moe, graph_safe=True, decode_step=decode_step)


def decode_step(model: GptOss, inputs: torch.Tensor, positions: torch.Tensor, cache: KVCache, kv_len: int,
                cpu_share: dict | None = None) -> torch.Tensor:
    """One decode token through every layer with fused kernels: the embedding lookup with the first RMSNorm, RoPE +
    KV write (ring slot included) in one launch, each residual add fused with the next RMSNorm (before the MoE with
    its router too; after it, inside the MoE's down GEMV). Same math as ``GptOss.layers_forward``; no host
    synchronisation. ``inputs``: the token id [1] (long; the embedding table on the model's device or, on a CUDA
    device, in pinned host RAM, read in place) or its embedded hidden state [1, H].

    ``cpu_share``: layer index -> (HostExchange, slot) for offloaded layers whose experts a CPU worker shares
    (engine/cpu_share.py); one-token steps of those layers go through ``experts_decode_shared``."""
    from gptoss_kernels import moe as moe_kernels
    from gptoss_kernels import norm as norm_kernels
    from gptoss_kernels import rope as rope_kernels

    cfg, ops, eps, layers = model.cfg, model.ops, model.cfg.rms_norm_eps, model.layers
    ids = inputs if inputs.dtype == torch.long else None
    t = None
    if ids is not None and _on_kernels(ids):
        x, t = norm_kernels.embed_rms_norm(ids, model.embedding, layers[0].attn_norm, eps, model.dtype)
    else:
        x = model.embed(ids) if ids is not None else inputs
    half = cfg.head_dim // 2
    if half & (half - 1) or not _on_kernels(x):  # shapes the fused kernels do not take: the unfused step
        return model.layers_forward(x, positions, partial(cache.update_static, kv_len=kv_len))
    if t is None:
        t = norm_kernels.rms_norm(x, layers[0].attn_norm, eps)
    for i, layer in enumerate(layers):
        lc = cache.layers[i]
        cap = lc.k.shape[0]
        qkv = ops.linear(t, layer.qkv_w, layer.qkv_b)
        q = rope_kernels.rope_qkv_cache(qkv, positions, cap if lc.ring else positions, model.inv_freq,
                                        model.concentration, lc.k, lc.v, lc.pos, cfg.num_attention_heads)
        span = cap if lc.ring else kv_len
        window = cfg.sliding_window if layer.sliding else None
        o = ops.attention(q, lc.k[:span], lc.v[:span], layer.sinks, positions, lc.pos[:span], model.sm_scale, window)
        attn_out = ops.linear(o, layer.o_w, layer.o_b)
        after = layers[i + 1].attn_norm if i + 1 < len(layers) else model.norm
        if experts_reachable(layer.gate_up_blocks, x):
            # residual add, MoE norm and router in one launch; the next residual add and norm in the down GEMV's
            x, t, routing = moe_kernels.add_rms_norm_route(x, attn_out, layer.mlp_norm, eps, layer.router_w,
                                                           layer.router_b)
            experts = (layer.gate_up_blocks, layer.gate_up_scales, layer.gate_up_bias, layer.down_blocks,
                       layer.down_scales, layer.down_bias, cfg.num_experts_per_tok, cfg.swiglu_alpha,
                       cfg.swiglu_limit, (x, after, eps))
            shared = cpu_share.get(i) if cpu_share and x.shape[0] == 1 else None
            if shared is not None:
                x, t = moe_kernels.experts_decode_shared(t, routing, *experts, *shared)
            else:
                x, t = moe_kernels.experts_decode(t, routing, *experts)
        else:
            x, t = norm_kernels.add_rms_norm(x, attn_out, layer.mlp_norm, eps)
            x, t = norm_kernels.add_rms_norm(x, ops.moe(t, layer, cfg), after, eps)
    return t
