"""Getting a chat ready: resolve the model, plan, load the engine with a progress bar, read the tokenizer.

Shared by ``gptoss chat`` and ``gptoss run``. Errors a user can act on (model missing, plan refused, out of
memory) come out as one ``GptossError`` with a hint, never a traceback.

Test hook: when ``GPTOSS_SCRIPTED_ENGINE`` names a JSON file, no model is loaded; a ``ScriptedEngine`` replays the
file's responses instead (for the terminal tests of the REPL, which need known replies). The file::

    {"responses": ["<|channel|>final<|message|>Hello!<|return|>", [200005, ...], ...],  # text or ids, in order
     "delay": 0.02,               # seconds per token (lets a test interrupt a reply)
     "context_length": 8192,      # default 131072
     "tokenizer": "tokenizer.json"}  # default: MODEL's tokenizer.json if MODEL is a directory, else a small one

Text responses spell special tokens out (``<|channel|>``); the rest is encoded with the tokenizer.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import GptossError, ModelNotFoundError, UsageError
from ..harmony import Tokenizer
from ..harmony.vocab import build_small_tokenizer_json, harmony_special_tokens

SCRIPTED_ENGINE_ENV = "GPTOSS_SCRIPTED_ENGINE"
DEFAULT_MODEL = "gpt-oss-20b"
OFFICIAL_MODELS = ("gpt-oss-20b", "gpt-oss-120b")


@dataclass
class Loaded:
    engine: Any  # a ChatEngine
    tokenizer: Tokenizer
    label: str  # the model's name as shown to the user
    device: str
    context_length: int
    load_seconds: float = 0.0
    notes: tuple[str, ...] = ()  # what the plan decided that the user should know


class OutOfMemory(GptossError):
    """The GPU (or RAM) ran out while loading or generating."""


@contextmanager
def memory_errors(doing: str, model: str) -> Iterator[None]:
    """Turn out-of-memory exceptions (torch's or Python's) into one clear message with what to do."""
    try:
        yield
    except MemoryError:
        raise OutOfMemory(f"out of system memory while {doing}",
                          hint=f"close other programs, or see `gptoss plan {model}` for what fits") from None
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError" and "out of memory" not in str(exc).lower():
            raise
        raise OutOfMemory(f"out of GPU memory while {doing}",
                          hint="use a smaller --context, close other programs using the GPU, or see "
                               f"`gptoss plan {model}` for what fits") from None


def ids_from_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids for text with special tokens spelled out: each ``<|name|>`` becomes its id, the rest is encoded."""
    specials = harmony_special_tokens()
    ids: list[int] = []
    for piece in re.split(r"(<\|[a-z_0-9]+\|>)", text):
        if piece in specials:
            ids.append(specials[piece])
        elif piece:
            ids += tokenizer.encode(piece)
    return ids


def small_tokenizer() -> Tokenizer:
    path = Path(tempfile.gettempdir()) / f"gptoss-small-tokenizer-{os.getuid() if hasattr(os, 'getuid') else 0}.json"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        build_small_tokenizer_json(tmp)
        os.replace(tmp, path)
    return Tokenizer.from_file(path)


def scripted_engine_file() -> Path | None:
    value = os.environ.get(SCRIPTED_ENGINE_ENV)
    return Path(value) if value else None


def _scripted_tokenizer(model: str, script: dict[str, Any], script_path: Path) -> Tokenizer:
    if script.get("tokenizer"):
        return Tokenizer.from_file(script_path.parent / script["tokenizer"])
    if Path(model).is_dir() and (Path(model) / "tokenizer.json").is_file():
        return Tokenizer.from_dir(model)
    return small_tokenizer()


def load_scripted(model: str, path: Path) -> Loaded:
    from ..engine.scripted import ScriptedEngine

    try:
        script = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GptossError(f"{SCRIPTED_ENGINE_ENV}: cannot read {path}: {exc}") from None
    tokenizer = _scripted_tokenizer(model, script, path)
    responses = [r if isinstance(r, list) else ids_from_text(tokenizer, r) for r in script.get("responses", [])]
    engine = ScriptedEngine(responses, context_length=int(script.get("context_length", 131072)),
                            delay=float(script.get("delay", 0.0)))
    label = Path(model).name if Path(model).is_dir() else model
    return Loaded(engine, tokenizer, f"{label} (scripted)", "scripted", engine.context_length)


def resolve(model: str, models_dir: str | None, interactive: bool) -> Path:
    """The model directory; on a terminal, offer to download a missing official model."""
    from ..store import resolve_model

    try:
        return resolve_model(model, models_dir)
    except ModelNotFoundError:
        if not (interactive and model.lower().removeprefix("openai/") in OFFICIAL_MODELS):
            raise
    from rich.prompt import Confirm

    from ..store_view import run_pull

    if not Confirm.ask(f"{model} is not downloaded yet. Download it now?", default=True):
        raise ModelNotFoundError(f"model {model} is not downloaded", hint=f"run `gptoss pull {model}`")
    run_pull(model, models_dir)
    return resolve_model(model, models_dir)


def make_plan(path: Path, device: str, context: int | None, plan_json: str | None) -> Any:
    from ..hardware import HardwareOverride, detect
    from ..plan import Plan, Wishes, plan_for

    if plan_json:
        try:
            text = Path(plan_json).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--plan-json: cannot read {plan_json}: {exc.strerror or exc}") from None
        return Plan.from_json(text)
    override = HardwareOverride.from_strings("0" if device == "cpu" else None, None)
    plan = plan_for(str(path), detect(override), Wishes(context=context))
    if not plan.fits:
        hint = "would fit: " + "; ".join(plan.suggestions) if plan.suggestions else None
        raise GptossError(f"{path.name} does not fit this machine: {plan.refusal_reason}", hint=hint)
    return plan


def load_model(model: str, device: str = "auto", context: int | None = None, plan_json: str | None = None,
               models_dir: str | None = None, interactive: bool = False) -> Loaded:
    """Everything ``chat`` and ``run`` need before the first prompt, with a progress bar on stderr."""
    script = scripted_engine_file()
    if script is not None:
        return load_scripted(model, script)
    path = resolve(model, models_dir, interactive)
    tokenizer = Tokenizer.from_dir(path)
    plan = make_plan(path, device, context, plan_json)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import gptoss_cli

    err = Console(stderr=True)
    label = path.name if Path(model).is_dir() else model
    progress = Progress(TextColumn("loading {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
    with progress, memory_errors(f"loading {label}", model):
        task = progress.add_task(label, total=None)
        engine = gptoss_cli.load(path, device=device, dtype=_compute_dtype(device, plan), plan=plan,
                                 context_length=context or plan.context_length,
                                 progress=lambda done, total: progress.update(task, completed=done, total=total))
    # what the plan decided, then how the engine runs (e.g. the torch path when Triton is missing)
    return Loaded(engine, tokenizer, label, str(engine.device), engine.context_length, engine.load_seconds,
                  tuple(plan.notes) + tuple(engine.notes))


def _compute_dtype(device: str, plan: Any) -> Any:
    """bf16 on the GPU (the checkpoint's own); float32 on the CPU, where bf16 matmuls are emulated and many times
    slower (measured: 5 vs 100 tok/s on the tiny model). MXFP4 experts stay packed either way."""
    import torch

    on_cpu = device == "cpu" or (device == "auto" and plan.device == "cpu")
    return torch.float32 if on_cpu else None


def load_tokenizer(model: str, models_dir: str | None = None) -> Tokenizer:
    """Only the tokenizer (for --print-prompt): no weights are read."""
    script = scripted_engine_file()
    if script is not None:
        return load_scripted(model, script).tokenizer
    return Tokenizer.from_dir(resolve(model, models_dir, interactive=False))


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
