"""Helpers of the chat tests: scripts for the scripted engine, ANSI stripping, and ``FakeTools``, a ToolRunner whose
tools are plain Python callables. The fixtures live in chat_fixtures (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from gptoss_cli.chat.loading import ids_from_text
from gptoss_cli.chat.session import ToolOutput
from gptoss_cli.harmony import PYTHON_TOOL, FunctionTool, ToolNamespace
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
    """python (a callable over the code) and function tools (callables over the JSON arguments)."""

    def __init__(self, python: Callable[[str], str] | None = None,
                 functions: dict[str, Callable[..., str]] | None = None) -> None:
        self.python = python
        self.funcs = functions or {}
        self.calls: list[tuple[str, str, str | None]] = []

    def builtin_tools(self) -> tuple[ToolNamespace, ...]:
        return (PYTHON_TOOL,) if self.python else ()

    def functions(self) -> tuple[FunctionTool, ...]:
        return tuple(FunctionTool(name, f"The {name} function.", {"type": "object", "properties": {}})
                     for name in self.funcs)

    def has_tool(self, recipient: str) -> bool:
        return (recipient == "python" and self.python is not None) or recipient.removeprefix("functions.") in self.funcs

    def dispatch(self, recipient: str, arguments: str, channel: str | None) -> ToolOutput:
        self.calls.append((recipient, arguments, channel))
        if recipient == "python":
            assert self.python is not None
            return ToolOutput(self.python(arguments))
        return ToolOutput(self.funcs[recipient.removeprefix("functions.")](**json.loads(arguments)))
