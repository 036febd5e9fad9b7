"""Helpers of the chat tests: scripts for the scripted engine, ANSI stripping, and ``FakeTools``, a ToolRunner whose
tools are plain Python callables. The fixtures live in chat_fixtures (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from gptoss_cli.chat.loading import ids_from_text
from gptoss_cli.chat.session import ToolOutput
from gptoss_cli.harmony import PYTHON_TOOL, FunctionTool, ToolCall, ToolNamespace
from gptoss_cli.harmony.tokenizer import Tokenizer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return ids_from_text(tokenizer, text)


def write_script(path: Path, responses: list[str], delay: float = 0.0, context_length: int = 131072) -> Path:
    path.write_text(json.dumps({"responses": responses, "delay": delay, "context_length": context_length}))
    return path


class FakeTools:
    """A ToolRunner: python (a callable over the code) and function tools (callables over the JSON arguments),
    behind ``approve(call) -> bool`` (default: approve everything)."""

    def __init__(self, python: Callable[[str], str] | None = None,
                 functions: dict[str, Callable[..., str]] | None = None,
                 approve: Callable[[ToolCall], bool] = lambda call: True) -> None:
        self.python = python
        self.funcs = functions or {}
        self.approve = approve
        self.calls: list[tuple[str, str, str | None]] = []

    def builtin_tools(self) -> tuple[ToolNamespace, ...]:
        return (PYTHON_TOOL,) if self.python else ()

    def functions(self) -> tuple[FunctionTool, ...]:
        return tuple(FunctionTool(name, f"The {name} function.", {"type": "object", "properties": {}})
                     for name in self.funcs)

    def run(self, call: ToolCall) -> ToolOutput:
        name = call.recipient.removeprefix("functions.")
        if not ((call.recipient == "python" and self.python) or name in self.funcs):
            return ToolOutput(f"Error: unknown tool {call.recipient!r}; available: python", "unknown")
        if not self.approve(call):
            return ToolOutput("The user denied this tool call.", "denied")
        self.calls.append((call.recipient, call.raw, call.channel))
        if call.recipient == "python":
            assert self.python is not None
            return ToolOutput(self.python(call.raw))
        return ToolOutput(self.funcs[name](**json.loads(call.raw)), author=f"functions.{name}")


def chat_env(tmp_path: Path, script: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a gptoss child in a test: its own data dir (history file), no CPR queries, the
    scripted engine when ``script`` is given."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GPTOSS_SCRIPTED_ENGINE", "NO_COLOR", "FORCE_COLOR")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1",
               GPTOSS_MODELS=str(tmp_path / "models"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               COLUMNS="100", LINES="30", **extra)
    if script is not None:
        env["GPTOSS_SCRIPTED_ENGINE"] = str(script)
    return env


def gptoss_command() -> list[str]:
    """How to start the CLI in a child process: the console script beside this interpreter, else its entry point."""
    import sys

    script = Path(sys.executable).with_name("gptoss.exe" if sys.platform == "win32" else "gptoss")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from gptoss_cli.cli import main; main()"]
