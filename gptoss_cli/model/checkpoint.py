"""Read a gpt-oss checkpoint in the Hugging Face hub layout (sharded safetensors + index).

Every tensor is checked against the config before a byte is read: present, right shape, right dtype, and its bytes
inside the file (a truncated download is caught here, not as a crash deep in the model). MXFP4 expert tensors stay
packed uint8; float tensors go straight to the requested dtype and device.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .config import GptOssConfig

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FLOAT_DTYPES = {"BF16", "F16", "F32"}
_TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8}
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1, "I16": 2,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    packed: bool  # MXFP4 blocks/scales: uint8, kept as is


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def expected_tensors(cfg: GptOssConfig) -> dict[str, TensorSpec]:
    """The hub layout (specs/gpt-oss-model.md §2.1): name -> shape and whether it is MXFP4-packed."""
    H, E, I, V = cfg.hidden_size, cfg.num_local_experts, cfg.intermediate_size, cfg.vocab_size
    out: dict[str, TensorSpec] = {}
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        dense = {
            "input_layernorm.weight": (H,),
            "post_attention_layernorm.weight": (H,),
            "self_attn.sinks": (cfg.num_attention_heads,),
            "self_attn.q_proj.weight": (cfg.q_dim, H),
            "self_attn.k_proj.weight": (cfg.kv_dim, H),
            "self_attn.v_proj.weight": (cfg.kv_dim, H),
            "self_attn.o_proj.weight": (H, cfg.q_dim),
            "mlp.router.weight": (E, H),
            "mlp.router.bias": (E,),
            "mlp.experts.gate_up_proj_bias": (E, 2 * I),
            "mlp.experts.down_proj_bias": (E, H),
        }
        if cfg.attention_bias:
            dense.update({"self_attn.q_proj.bias": (cfg.q_dim,), "self_attn.k_proj.bias": (cfg.kv_dim,),
                          "self_attn.v_proj.bias": (cfg.kv_dim,), "self_attn.o_proj.bias": (H,)})
        for name, shape in dense.items():
            out[p + name] = TensorSpec(shape, packed=False)
        for name, shape in {
            "mlp.experts.gate_up_proj_blocks": (E, 2 * I, H // 32, 16),
            "mlp.experts.gate_up_proj_scales": (E, 2 * I, H // 32),
            "mlp.experts.down_proj_blocks": (E, H, I // 32, 16),
            "mlp.experts.down_proj_scales": (E, H, I // 32),
        }.items():
            out[p + name] = TensorSpec(shape, packed=True)
    out["model.embed_tokens.weight"] = TensorSpec((V, H), packed=False)
    out["model.norm.weight"] = TensorSpec((H,), packed=False)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = TensorSpec((V, H), packed=False)
    return out


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse one safetensors header and check every tensor's bytes lie inside the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is truncated (no safetensors header)",
                                      hint="Delete it and run `gptoss pull` again to re-download.")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header ({n} header bytes, "
                                      f"file has {size})", hint="Delete it and run `gptoss pull` again.")
            meta = json.loads(f.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)",
                              hint="Delete it and run `gptoss pull` again.") from None
    data_size = size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor '{name}'") from None
        if end > data_size:
            raise CheckpointError(f"{path}: truncated: tensor '{name}' ends at byte {end} but the file holds "
                                  f"{data_size} data bytes", hint="Delete it and run `gptoss pull` again.")
        expected = _ITEMSIZE.get(dtype, 0) * _prod(shape)
        if end - begin != expected:
            raise CheckpointError(f"{path}: corrupt header: tensor '{name}' spans {end - begin} bytes, "
                                  f"{dtype}{list(shape)} needs {expected}")
        entries[name] = TensorEntry(path, dtype, shape, end - begin)
    return entries


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def index_checkpoint(model_dir: str | Path) -> dict[str, TensorEntry]:
    """Map every tensor name to its file, dtype and shape, from the index (or a single model.safetensors)."""
    root = Path(model_dir)
    index_path = root / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{index_path}: not a valid safetensors index (no 'weight_map')") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise CheckpointError(f"{root}: shard {missing[0]} is listed in {INDEX_NAME} but missing"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                  hint="Run `gptoss pull` again to fetch the missing files.")
        entries: dict[str, TensorEntry] = {}
        for f in files:
            entries.update(read_header(root / f))
        for name, f in weight_map.items():
            if name not in entries:
                raise CheckpointError(f"{root / f}: tensor '{name}' is listed in {INDEX_NAME} but not in the file")
        return entries
    single = root / SINGLE_NAME
    if single.is_file():
        return read_header(single)
    raise CheckpointError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME} found (is this a model directory in the hub "
                          f"layout?)")


def validate(cfg: GptOssConfig, entries: dict[str, TensorEntry]) -> None:
    """Every expected tensor present with the right shape and dtype; the error names file and tensor."""
    for name, spec in expected_tensors(cfg).items():
        entry = entries.get(name)
        if entry is None:
            raise CheckpointError(f"checkpoint is missing tensor '{name}'",
                                  hint="The files do not match config.json; re-download the model.")
        if entry.shape != spec.shape:
            raise CheckpointError(f"{entry.file.name}: tensor '{name}' has shape {list(entry.shape)}, "
                                  f"config.json implies {list(spec.shape)}")
        if spec.packed and entry.dtype != "U8":
            raise CheckpointError(f"{entry.file.name}: tensor '{name}' has dtype {entry.dtype}, MXFP4 needs U8")
        if not spec.packed and entry.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{entry.file.name}: tensor '{name}' has dtype {entry.dtype}, expected BF16")


def load_tensors(
    model_dir: str | Path,
    cfg: GptOssConfig,
    dtype: torch.dtype,
    device_for: Callable[[str], torch.device | str] = lambda name: "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for the whole checkpoint, validated first.

    Float tensors arrive in ``dtype`` (converted on the target device, so bf16 never detours through float32);
    packed tensors stay uint8. ``device_for`` places each tensor (the plan decides: experts may stay in RAM).
    """
    from safetensors import safe_open

    entries = index_checkpoint(model_dir)
    validate(cfg, entries)
    wanted = expected_tensors(cfg)
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(entries[name].file, []).append(name)
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in names:
                    device = torch.device(device_for(name))
                    t = f.get_tensor(name)
                    if device.type != "cpu":
                        t = t.to(device, non_blocking=False)
                    if not wanted[name].packed and t.dtype != dtype:
                        t = t.to(dtype)
                    yield name, t
        except CheckpointError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:  # safetensors raises SafetensorError (RuntimeError-like)
            raise CheckpointError(f"{path}: cannot read tensor data ({exc})",
                                  hint="The file may be corrupt; delete it and run `gptoss pull` again.") from None


def checkpoint_bytes(model_dir: str | Path) -> int:
    return sum(e.nbytes for e in index_checkpoint(model_dir).values())


def disk_files(model_dir: str | Path) -> list[Path]:
    root = Path(model_dir)
    return sorted({e.file for e in index_checkpoint(root).values()}, key=os.fspath)
