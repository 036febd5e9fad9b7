"""Bytes per tensor of a gpt-oss checkpoint in the hub layout, computed from the config alone or read
from the safetensors headers of a local copy. The planner needs them before any download, so the
config path reproduces the hub files byte for byte (specs/gpt-oss-model.md §2.1, §2.3)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError
from .model.config import GptOssConfig

BF16 = 2
MXFP4_BLOCK = 32  # values per MXFP4 block: 16 bytes of packed nibbles + 1 byte of E8M0 scale
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def tensor_sizes(config: GptOssConfig) -> dict[str, int]:
    """Every tensor of the hub layout and its byte size: bf16 everywhere except the experts'
    MXFP4 blocks and scales (uint8); expert biases stay bf16."""
    h, e, inter = config.hidden_size, config.num_local_experts, config.intermediate_size
    sizes = {"model.embed_tokens.weight": config.vocab_size * h * BF16, "model.norm.weight": h * BF16}
    if not config.tie_word_embeddings:
        sizes["lm_head.weight"] = config.vocab_size * h * BF16
    projections = (("q_proj", config.q_dim, h), ("k_proj", config.kv_dim, h),
                   ("v_proj", config.kv_dim, h), ("o_proj", h, config.q_dim))
    experts = (("gate_up_proj", 2 * inter, h), ("down_proj", h, inter))
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        sizes[p + "input_layernorm.weight"] = h * BF16
        sizes[p + "post_attention_layernorm.weight"] = h * BF16
        for name, rows, cols in projections:
            sizes[f"{p}self_attn.{name}.weight"] = rows * cols * BF16
            if config.attention_bias:
                sizes[f"{p}self_attn.{name}.bias"] = rows * BF16
        sizes[p + "self_attn.sinks"] = config.num_attention_heads * BF16
        sizes[p + "mlp.router.weight"] = e * h * BF16
        sizes[p + "mlp.router.bias"] = e * BF16
        for name, rows, cols in experts:
            blocks = e * rows * (cols // MXFP4_BLOCK)
            sizes[f"{p}mlp.experts.{name}_blocks"] = blocks * (MXFP4_BLOCK // 2)
            sizes[f"{p}mlp.experts.{name}_scales"] = blocks
            sizes[f"{p}mlp.experts.{name}_bias"] = e * rows * BF16
    return sizes


def checkpoint_sizes(model_dir: Path) -> dict[str, int] | None:
    """Tensor byte sizes from the safetensors headers of a local copy (only the headers are read),
    or None when no weight file is there yet: a directory holding only config.json and the index,
    before the download. A partial download is an error that says which shard is missing."""
    index = _index(model_dir)
    shards = set(index.get("weight_map", {}).values()) if index else {SINGLE_FILE}
    if not any((model_dir / f).is_file() for f in shards):
        return None
    from .model.checkpoint import index_checkpoint  # imports torch: only when weights are on disk

    return {name: entry.nbytes for name, entry in index_checkpoint(model_dir).items()}


def index_total_size(model_dir: Path) -> int | None:
    """``metadata.total_size`` of the safetensors index, when the directory has one."""
    total = _index(model_dir).get("metadata", {}).get("total_size")
    return int(total) if isinstance(total, (int, float)) else None


def _index(model_dir: Path) -> dict:
    path = model_dir / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    return raw if isinstance(raw, dict) else {}
