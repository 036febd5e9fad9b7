"""The tools room (tools/registry.py) behind the session's ``ToolRunner`` seam.

``build_tools`` makes the registry ``chat`` and ``run`` ask for: the python tool (``--python``), function tools
from ``--tools FILE`` (a Python file of functions, or a JSON OpenAI-style tool list whose calls the caller of
``gptoss run --json`` executes), and the approval policy (``--yes``, or a question asked through ``ask``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..harmony import PYTHON_TOOL, FunctionTool, ToolCall, ToolNamespace, function_tools
from ..tools.approval import Approval, AskFn
from ..tools.registry import ToolRegistry
from .session import ToolOutput


class RegistryTools:
    """A ``ToolRunner`` over a ``ToolRegistry``: statuses for the transcript, results for the model."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    def builtin_tools(self) -> tuple[ToolNamespace, ...]:
        return (PYTHON_TOOL,) if "python" in self.registry.builtin_tool_names() else ()

    def functions(self) -> tuple[FunctionTool, ...]:
        return function_tools(self.registry.function_specs())

    def run(self, call: ToolCall) -> ToolOutput:
        result = self.registry.dispatch(call.recipient, call.raw, call.channel)
        return ToolOutput(result.content, result.status, result.author)

    def listing(self) -> list[tuple[str, str, bool]]:
        """(name, description, runs without asking) for /tools."""
        approval = self.registry.approval
        return [(t.name, t.description, approval.yes or t.name in approval.always_allowed)
                for t in self.registry.listing()]

    def close(self) -> None:
        self.registry.close()


def build_tools(python: bool, tools_file: str | None, ask: AskFn | None, yes: bool) -> RegistryTools | None:
    """The session's tools, or None when none are enabled."""
    from ..tools.functions import load_functions_file, tools_from_openai
    from ..tools.python import PythonTool

    functions = []
    if tools_file:
        path = Path(tools_file).expanduser()
        if path.suffix.lower() == ".json":
            from ..tools.functions import ToolsFileError

            try:
                functions = tools_from_openai(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as exc:
                raise ToolsFileError(f"cannot read the tool list {path}: {exc}") from None
        else:
            functions = load_functions_file(path)
    if not python and not functions:
        return None
    registry = ToolRegistry(python=PythonTool() if python else None, functions=functions,
                            approval=Approval(ask, yes=yes))
    return RegistryTools(registry)
