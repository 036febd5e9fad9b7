"""Tensor sizes for the planner: from the config alone (before a download) and from a local copy."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from gptoss_cli.errors import CheckpointError
from gptoss_cli.hardware import GiB, Gpu, Hardware
from gptoss_cli.model.config import GptOssConfig, official_config
from gptoss_cli.plan import model_bytes, plan_for, resolve_model
from gptoss_cli.sizes import checkpoint_sizes, index_total_size, tensor_sizes


@pytest.mark.parametrize("name, total, count", [
    ("gpt-oss-20b", 13_761_264_768, 459),      # "total_size" of the hub's model.safetensors.index.json
    ("gpt-oss-120b", 65_248_815_744, 687),     # tensor_bytes of the 120b hub manifest (specs §2.3)
])
def test_config_sizes_reproduce_the_hub_checkpoint_totals(name: str, total: int, count: int) -> None:
    sizes = tensor_sizes(official_config(name))
    assert sum(sizes.values()) == total
    assert len(sizes) == count


def test_config_sizes_agree_with_the_loaders_expected_layout() -> None:
    from gptoss_cli.model.checkpoint import expected_tensors

    cfg = official_config("gpt-oss-20b")
    expected = {name: math.prod(spec.shape) * (1 if spec.packed else 2)
                for name, spec in expected_tensors(cfg).items()}
    assert tensor_sizes(cfg) == expected


def test_every_byte_lands_in_exactly_one_placement_group() -> None:
    cfg = official_config("gpt-oss-120b")
    sizes = tensor_sizes(cfg)
    mb = model_bytes(cfg, sizes)
    assert mb.weights == sum(sizes.values())
    assert mb.embedding == mb.lm_head == 201088 * 2880 * 2
    assert len(set(mb.experts)) == 1 and mb.experts[0] == sum(
        v for k, v in sizes.items() if k.startswith("model.layers.0.mlp.experts."))
    # int8 halves the q/k/v/o matrices and adds a bf16 scale per row: bytes per layer shrink by ~half
    assert 0.45 < mb.attention_int8[0] / mb.attention[0] < 0.55


def test_local_sizes_are_read_from_the_safetensors_headers(tiny_model_dir: Path) -> None:
    cfg = GptOssConfig.from_file(tiny_model_dir)
    assert checkpoint_sizes(tiny_model_dir) == tensor_sizes(cfg)


def test_a_directory_without_weights_plans_from_config_and_checks_the_index(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    for f in ("config.json", "model.safetensors.index.json"):
        shutil.copy(tiny_model_dir / f, tmp_path / f)
    cfg = GptOssConfig.from_file(tmp_path)
    assert checkpoint_sizes(tmp_path) is None
    assert index_total_size(tmp_path) == sum(tensor_sizes(cfg).values())
    name, _, sizes, notes = resolve_model(str(tmp_path))
    assert sizes == tensor_sizes(cfg)
    assert notes == ["sizes computed from config.json (no weights downloaded yet)"]

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] += 1000
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    plan = plan_for(str(tmp_path), Hardware((Gpu(0, "x", (8, 9), 8 * GiB, 8 * GiB),), 8 * GiB, 8 * GiB, 4, "t"))
    assert any("not in the hub layout" in n for n in plan.notes)


def test_a_partial_download_is_an_error_naming_the_missing_shard(tiny_model_dir: Path, tmp_path: Path) -> None:
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        checkpoint_sizes(tmp_path)
