"""Bad configs and damaged checkpoints fail with one readable error that names the field, file and tensor."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gptoss_cli
from gptoss_cli.errors import CheckpointError, ConfigError
from gptoss_cli.model.config import GptOssConfig, official_config
from gptoss_cli.model.random_weights import config_dict, tiny_config_dict


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def shard_of(model_dir: Path, tensor: str) -> Path:
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return model_dir / index["weight_map"][tensor]


def test_official_configs_parse_from_hub_json() -> None:
    cfg = GptOssConfig.from_dict(config_dict())
    assert replace(cfg, eos_token_ids=()) == replace(official_config("gpt-oss-20b"), eos_token_ids=())
    assert cfg.num_hidden_layers == 24 and cfg.num_local_experts == 32 and cfg.q_dim == 4096 and cfg.kv_dim == 512
    assert cfg.sliding_layers == list(range(0, 24, 2)) and cfg.rope_scaling.truncate is False
    big = GptOssConfig.from_dict(config_dict(num_hidden_layers=36, num_local_experts=128))
    assert big.num_hidden_layers == official_config("gpt-oss-120b").num_hidden_layers
    with pytest.raises(Exception):
        cfg.hidden_size = 1  # frozen


def test_newer_rope_parameters_layout_is_accepted() -> None:
    raw = tiny_config_dict()
    rope = raw.pop("rope_scaling")
    raw["rope_parameters"] = {**rope, "rope_theta": raw.pop("rope_theta")}
    cfg = GptOssConfig.from_dict(raw)
    assert cfg.rope_theta == 150000.0 and cfg.rope_scaling.factor == 8.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("hidden_size"), "missing required field 'hidden_size'"),
        (lambda c: c.update(num_attention_heads="64"), "field 'num_attention_heads' must be int"),
        (lambda c: c.update(num_key_value_heads=3), "must be a multiple of 'num_key_value_heads'"),
        (lambda c: c.update(num_experts_per_tok=9), "'num_experts_per_tok' (9) exceeds"),
        (lambda c: c.update(hidden_size=70), "'hidden_size' must be a multiple of 32"),
        (lambda c: c.update(layer_types=["sliding_attention"]), "field 'layer_types'"),
        (lambda c: c.update(model_type="llama"), "field 'model_type'"),
        (lambda c: c["rope_scaling"].update(rope_type="linear"), "field 'rope_type' must be 'yarn'"),
        (lambda c: c.update(rms_norm_eps=-1.0), "field 'rms_norm_eps' must be positive"),
    ],
)
def test_bad_config_names_the_field(edit, message: str, tmp_path: Path) -> None:
    raw = tiny_config_dict()
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        GptOssConfig.from_file(tmp_path)
    assert message in info.value.message and "config.json" in info.value.message


def test_config_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GptOssConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        GptOssConfig.from_file(tmp_path / "nowhere")


def test_missing_shard(model_copy: Path) -> None:
    shard = shard_of(model_copy, "lm_head.weight")
    shard.unlink()
    with pytest.raises(CheckpointError) as info:
        gptoss_cli.load(model_copy, device="cpu")
    assert shard.name in info.value.message and "missing" in info.value.message


def test_truncated_shard_names_file_and_tensor(model_copy: Path) -> None:
    shard = shard_of(model_copy, "model.layers.0.mlp.experts.down_proj_blocks")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError) as info:
        gptoss_cli.load(model_copy, device="cpu")
    assert shard.name in info.value.message and "truncated" in info.value.message
    assert "tensor '" in info.value.message


def test_corrupt_header(model_copy: Path) -> None:
    shard = shard_of(model_copy, "model.norm.weight")
    data = bytearray(shard.read_bytes())
    data[10:20] = b"\xff" * 10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        gptoss_cli.load(model_copy, device="cpu")


def test_empty_file(model_copy: Path) -> None:
    shard = shard_of(model_copy, "model.norm.weight")
    shard.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        gptoss_cli.load(model_copy, device="cpu")


def rewrite(shard: Path, change) -> None:
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})


def test_wrong_shape_names_file_and_tensor(model_copy: Path) -> None:
    name = "model.layers.1.self_attn.k_proj.weight"
    shard = shard_of(model_copy, name)
    rewrite(shard, lambda t: t.__setitem__(name, torch.zeros(16, 64, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError) as info:
        gptoss_cli.load(model_copy, device="cpu")
    assert shard.name in info.value.message and name in info.value.message and "[16, 64]" in info.value.message


def test_wrong_dtype_for_packed_experts(model_copy: Path) -> None:
    name = "model.layers.0.mlp.experts.gate_up_proj_scales"
    shard = shard_of(model_copy, name)
    rewrite(shard, lambda t: t.__setitem__(name, t[name].to(torch.bfloat16)))
    with pytest.raises(CheckpointError, match=f"'{name}' has dtype BF16, MXFP4 needs U8"):
        gptoss_cli.load(model_copy, device="cpu")


def test_missing_tensor(model_copy: Path) -> None:
    name = "model.layers.2.self_attn.sinks"
    shard = shard_of(model_copy, name)
    rewrite(shard, lambda t: t.pop(name))
    index_path = model_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        gptoss_cli.load(model_copy, device="cpu")


def test_packed_experts_stay_uint8_and_floats_arrive_in_the_compute_dtype(tiny_model_dir: Path) -> None:
    engine = gptoss_cli.load(tiny_model_dir, device="cpu")
    layer = engine.model.layers[0]
    assert layer.gate_up_blocks.dtype == torch.uint8 and layer.down_scales.dtype == torch.uint8
    assert layer.qkv_w.dtype == torch.bfloat16 and engine.model.embedding.dtype == torch.bfloat16
