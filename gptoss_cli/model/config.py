"""The model's shape, parsed from the hub's ``config.json`` into a frozen dataclass.

Accepts the layout of the official repos (``rope_scaling`` + ``rope_theta``) and the newer
transformers layout (``rope_parameters`` holding both). Every error names the field at fault.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters; ``truncate`` must stay False for gpt-oss (see specs §7.1)."""

    factor: float = 32.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    truncate: bool = False


@dataclass(frozen=True)
class GptOssConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    intermediate_size: int
    sliding_window: int = 128
    rope_theta: float = 150000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    layer_types: tuple[str, ...] = ()
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    eos_token_ids: tuple[int, ...] = (200002,)
    pad_token_id: int | None = 199999

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_sliding(i)]

    @property
    def full_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if not self.is_sliding(i)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- parsing --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "GptOssConfig":
        return _parse(raw, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "GptOssConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no config.json found (is this a model directory in the hub layout?)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return _parse(raw, str(path))


def _field(raw: dict[str, Any], name: str, kind: type, source: str, default: Any = ..., positive: bool = False,
           aliases: tuple[str, ...] = ()) -> Any:
    """Read one field with a type check; the error says which field and what was wrong."""
    for key in (name, *aliases):
        if key in raw:
            value = raw[key]
            break
    else:
        if default is ...:
            raise ConfigError(f"{source}: missing required field '{name}'")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{source}: field '{key}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{source}: field '{key}' must be finite, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{source}: field '{key}' must be positive, got {value!r}")
    return value


def _parse(raw: dict[str, Any], source: str) -> GptOssConfig:
    model_type = raw.get("model_type", "gpt_oss")
    if model_type != "gpt_oss":
        raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; gptoss runs only 'gpt_oss' models")

    ints = {
        name: _field(raw, name, int, source, positive=True, aliases=aliases)
        for name, aliases in [
            ("vocab_size", ()),
            ("hidden_size", ()),
            ("num_hidden_layers", ()),
            ("num_attention_heads", ()),
            ("num_local_experts", ("num_experts",)),
            ("intermediate_size", ()),
        ]
    }
    heads = ints["num_attention_heads"]
    kv_heads = _field(raw, "num_key_value_heads", int, source, default=heads, positive=True)
    head_dim = _field(raw, "head_dim", int, source, default=ints["hidden_size"] // heads, positive=True)
    top_k = _field(raw, "num_experts_per_tok", int, source, positive=True, aliases=("experts_per_token",))
    if heads % kv_heads:
        raise ConfigError(f"{source}: field 'num_attention_heads' ({heads}) must be a multiple of "
                          f"'num_key_value_heads' ({kv_heads})")
    if head_dim % 2:
        raise ConfigError(f"{source}: field 'head_dim' must be even for RoPE, got {head_dim}")
    if top_k > ints["num_local_experts"]:
        raise ConfigError(f"{source}: field 'num_experts_per_tok' ({top_k}) exceeds "
                          f"'num_local_experts' ({ints['num_local_experts']})")
    for name in ("hidden_size", "intermediate_size"):
        if ints[name] % 32:
            raise ConfigError(f"{source}: field '{name}' must be a multiple of 32 (the MXFP4 block), "
                              f"got {ints[name]}")

    rope_params = raw.get("rope_parameters")
    rope_raw = raw.get("rope_scaling")
    if rope_raw is None and isinstance(rope_params, dict):
        rope_raw = rope_params
    rope_theta = _field(raw, "rope_theta", float, source, default=None, positive=True)
    if rope_theta is None and isinstance(rope_params, dict):
        rope_theta = _field(rope_params, "rope_theta", float, f"{source} rope_parameters", default=None, positive=True)
    if rope_theta is None:
        rope_theta = 150000.0
    if rope_raw is None:
        rope = RopeScaling()
    elif not isinstance(rope_raw, dict):
        raise ConfigError(f"{source}: field 'rope_scaling' must be an object, got {rope_raw!r}")
    else:
        rsrc = f"{source} rope_scaling"
        rope_type = rope_raw.get("rope_type", rope_raw.get("type", "yarn"))
        if rope_type != "yarn":
            raise ConfigError(f"{rsrc}: field 'rope_type' must be 'yarn', got {rope_type!r}")
        rope = RopeScaling(
            factor=_field(rope_raw, "factor", float, rsrc, default=32.0, positive=True),
            beta_fast=_field(rope_raw, "beta_fast", float, rsrc, default=32.0, positive=True),
            beta_slow=_field(rope_raw, "beta_slow", float, rsrc, default=1.0, positive=True),
            original_max_position_embeddings=_field(rope_raw, "original_max_position_embeddings", int, rsrc,
                                                    default=4096, positive=True),
            truncate=_field(rope_raw, "truncate", bool, rsrc, default=False),
        )

    n_layers = ints["num_hidden_layers"]
    layer_types = raw.get("layer_types")
    if layer_types is None:
        layer_types = [SLIDING if i % 2 == 0 else FULL for i in range(n_layers)]
    if not isinstance(layer_types, list) or len(layer_types) != n_layers:
        raise ConfigError(f"{source}: field 'layer_types' must list one type per layer ({n_layers}), "
                          f"got {layer_types!r}")
    for i, kind in enumerate(layer_types):
        if kind not in (SLIDING, FULL):
            raise ConfigError(f"{source}: field 'layer_types[{i}]' must be '{SLIDING}' or '{FULL}', got {kind!r}")

    eos = raw.get("eos_token_id", 200002)
    eos_ids = tuple(eos) if isinstance(eos, list) else (eos,) if eos is not None else ()
    if not all(isinstance(i, int) for i in eos_ids):
        raise ConfigError(f"{source}: field 'eos_token_id' must be an int or a list of ints, got {eos!r}")

    return GptOssConfig(
        **ints,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_experts_per_tok=top_k,
        sliding_window=_field(raw, "sliding_window", int, source, default=128, positive=True),
        rope_theta=rope_theta,
        rope_scaling=rope,
        max_position_embeddings=_field(raw, "max_position_embeddings", int, source, default=131072, positive=True),
        rms_norm_eps=_field(raw, "rms_norm_eps", float, source, default=1e-5, positive=True),
        swiglu_limit=_field(raw, "swiglu_limit", float, source, default=7.0, positive=True),
        swiglu_alpha=_field(raw, "swiglu_alpha", float, source, default=1.702, positive=True),
        layer_types=tuple(layer_types),
        tie_word_embeddings=_field(raw, "tie_word_embeddings", bool, source, default=False),
        attention_bias=_field(raw, "attention_bias", bool, source, default=True),
        eos_token_ids=eos_ids,
        pad_token_id=raw.get("pad_token_id"),
    )


def official_config(name: str) -> GptOssConfig:
    """Built-in shapes of the two official models, for planning before any download."""
    layers, experts = {"gpt-oss-20b": (24, 32), "gpt-oss-120b": (36, 128)}[name]
    return GptOssConfig(
        vocab_size=201088, hidden_size=2880, num_hidden_layers=layers, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=experts, num_experts_per_tok=4,
        intermediate_size=2880, layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)),
        eos_token_ids=(200002, 199999, 200012),
    )
