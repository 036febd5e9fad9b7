"""Nothing runs without the user's say: approve once, always for this tool, or deny.

The REPL owns the question (a callback ``ask(call) -> "once" | "always" | "deny"``, shown with
``render_call``); ``Approval`` owns the rule. Without a callback and without ``yes`` every call is denied, so
a session that forgets to wire the question up runs nothing. A denied call goes back to the model as
``DENIED``, and the turn goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from gptoss_cli.tools.call import ToolCall

Decision = Literal["once", "always", "deny"]
AskFn = Callable[[ToolCall], Decision]
DENIED = "The user denied this tool call."


class Approval:
    """The approval policy of one session. ``yes=True`` (``--yes``, or the config setting) approves every call."""

    def __init__(self, ask: AskFn | None = None, *, yes: bool = False) -> None:
        self._ask = ask
        self.yes = yes
        self._always: set[str] = set()

    @property
    def always_allowed(self) -> frozenset[str]:
        """Tools the user approved for the rest of the session ("python", "functions.NAME")."""
        return frozenset(self._always)

    def allows(self, call: ToolCall) -> bool:
        """Ask if needed; an answer other than "once" or "always" denies."""
        if self.yes or call.tool in self._always:
            return True
        if self._ask is None:
            return False
        decision = self._ask(call)
        if decision == "always":
            self._always.add(call.tool)
        return decision in ("once", "always")


def render_call(call: ToolCall):  # -> rich.console.RenderableType
    """A rich panel showing what is about to run: highlighted code for python, pretty JSON for a function."""
    from rich.panel import Panel
    from rich.syntax import Syntax

    if call.kind == "python":
        body = Syntax(call.text, "python", word_wrap=True, background_color="default")
    elif call.arguments is not None:
        pretty = json.dumps(call.arguments, indent=2, ensure_ascii=False)
        body = Syntax(pretty, "json", word_wrap=True, background_color="default")
    else:
        body = Syntax(call.text, "text", word_wrap=True, background_color="default")
    return Panel(body, title=call.tool, title_align="left", border_style="yellow")
