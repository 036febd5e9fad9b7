"""The tools of one chat session, and the one door through which the model's calls reach them.

The harmony layer renders what ``builtin_tool_names()`` and ``function_specs()`` describe. The chat session hands
each call the model ends with ``<|call|>`` to ``dispatch``, which answers every call with a ``ToolResult`` and
never raises for anything the model wrote: an unknown tool, arguments that are not a JSON object, a denied call,
an error in the tool, all come back as error results so the turn goes on.

Recipients are taken as the model writes them (harmony spec §4.7, §7): ``python`` (also ``python.*``),
``functions.NAME``, and a bare ``NAME`` when it names a function; a ``json`` glued to the name
(``NAMEjson``, ``NAME<|constrain|>json``) is tolerated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptoss_cli.tools.approval import DENIED, Approval
from gptoss_cli.tools.call import ToolCall, ToolResult, clip
from gptoss_cli.tools.functions import FunctionTool
from gptoss_cli.tools.python import PythonTool

_JSON_SUFFIXES = ("<|constrain|>json", "json")


@dataclass(frozen=True)
class ToolInfo:
    """One line of ``/tools``."""

    name: str  # "python" or "functions.NAME"
    description: str
    runs_locally: bool


class ToolRegistry:
    """Python (on or off) plus function tools, behind one approval policy.

    ``approval`` defaults to a policy that denies everything: pass ``Approval(ask)`` or ``Approval(yes=True)``.
    Function results are cut to ``max_result_chars`` like python output.
    """

    def __init__(
        self,
        *,
        python: PythonTool | None = None,
        functions: Sequence[FunctionTool] = (),
        approval: Approval | None = None,
        max_result_chars: int = 20_000,
    ) -> None:
        self.python = python
        self.functions = {tool.name: tool for tool in functions}
        self.approval = approval if approval is not None else Approval()
        self.max_result_chars = max_result_chars

    def builtin_tool_names(self) -> tuple[str, ...]:
        """Harmony's built-in tools to render in the system message: ``("python",)`` or ``()``."""
        return ("python",) if self.python is not None else ()

    def function_specs(self) -> list[dict[str, Any]]:
        """``{name, description, parameters}`` for each function, for the developer message."""
        return [tool.spec() for tool in self.functions.values()]

    def listing(self) -> list[ToolInfo]:
        tools = []
        if self.python is not None:
            tools.append(ToolInfo("python", f"stateful Python in {self.python.workdir}", True))
        for tool in self.functions.values():
            tools.append(ToolInfo(f"functions.{tool.name}", tool.description, tool.executable))
        return tools

    def has_tool(self, recipient: str) -> bool:
        """Whether a recipient, as the model wrote it, names an enabled tool."""
        return self.resolve(recipient, "").kind != "unknown"

    def resolve(self, recipient: str, text: str, channel: str | None = None) -> ToolCall:
        """What a call means: which tool, which arguments, or why it cannot run. Runs nothing."""
        target = recipient.strip()
        if target == "python" or target.startswith("python."):
            if self.python is None:
                return ToolCall(recipient, target, "unknown", text, channel, error=self._unknown(target))
            return ToolCall(recipient, "python", "python", _code(text), channel)
        function = self._function(target)
        if function is None:
            return ToolCall(recipient, target, "unknown", text, channel, error=self._unknown(target))
        tool = f"functions.{function.name}"
        kind = "function" if function.executable else "external"
        arguments, problem = _arguments(text)
        if problem is None and arguments is not None and function.executable:  # the caller checks its own
            problem = function.check(arguments)
        return ToolCall(recipient, tool, kind, text, channel, arguments, problem)

    def dispatch(self, recipient: str, text: str, channel: str | None = None) -> ToolResult:
        """Resolve, ask for approval, run; always an answer for the model."""
        return self.execute(self.resolve(recipient, text, channel))

    def execute(self, call: ToolCall) -> ToolResult:
        """Run a resolved call if it can run and the user approves it."""
        author = call.tool or "functions"
        if call.kind == "unknown":
            return ToolResult(author, f"Error: {call.error}", "unknown", call.channel)
        if call.error is not None:
            return ToolResult(author, f"Error: {call.error}", "invalid", call.channel)
        if call.kind == "external":
            message = f"Error: {call.tool} is run by the caller, not by gptoss"
            return ToolResult(author, message, "external", call.channel)
        if not self.approval.allows(call):
            return ToolResult(author, DENIED, "denied", call.channel)
        if call.kind == "python" and self.python is not None:
            outcome = self.python.run(call.text)
            return ToolResult("python", outcome.text, "error" if outcome.is_error else "ok", call.channel)
        content, is_error = self.functions[call.name].call(call.arguments or {})
        return ToolResult(author, clip(content, self.max_result_chars), "error" if is_error else "ok", call.channel)

    def close(self) -> None:
        if self.python is not None:
            self.python.close()

    def _function(self, target: str) -> FunctionTool | None:
        name = target.removeprefix("functions.").strip()
        candidates = [name] + [name.removesuffix(s).strip() for s in _JSON_SUFFIXES if name.endswith(s)]
        return next((self.functions[c] for c in candidates if c in self.functions), None)

    def _unknown(self, target: str) -> str:
        available = [info.name for info in self.listing()]
        offer = f"available tools: {', '.join(available)}" if available else "no tools are enabled in this session"
        return f"unknown tool {target!r}; {offer}"


def _code(text: str) -> str:
    """Python code; a JSON object ``{"code": "..."}`` (some models wrap it) is unwrapped."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict) and list(value) == ["code"] and isinstance(value["code"], str):
            return value["code"]
    return text


def _arguments(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A call's JSON arguments: empty means ``{}``; a lone object wrapped in ``[...]`` is unwrapped."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"the arguments are not valid JSON ({exc}); send a JSON object"
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if not isinstance(value, dict):
        return None, f"the arguments must be a JSON object, not {type(value).__name__}"
    return value, None
