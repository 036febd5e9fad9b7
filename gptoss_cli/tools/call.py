"""What flows between the chat session and the tools: a call the model made, and the result it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CallKind = Literal["python", "function", "external", "unknown"]


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the registry understood it.

    ``kind``: ``python`` (code in ``text``), ``function`` (a local function, JSON ``arguments``), ``external``
    (a function the caller of ``gptoss run --json`` executes: the session hands the call back instead of
    dispatching it) or ``unknown``. ``error`` says why the call cannot run (unknown tool, arguments that are
    not a JSON object, missing or unexpected arguments); such a call is answered with that error, unrun.
    """

    recipient: str  # as the model wrote it
    tool: str  # canonical: "python" or "functions.NAME"; for an unknown tool, the recipient
    kind: CallKind
    text: str  # the message body: code for python, raw JSON for functions
    channel: str | None = None
    arguments: dict[str, Any] | None = None  # parsed JSON, for a function call
    error: str | None = None

    @property
    def name(self) -> str:
        """The function's own name (``get_weather``), or the tool name for python."""
        return self.tool.removeprefix("functions.")


ResultStatus = Literal["ok", "error", "denied", "invalid", "unknown", "external"]


@dataclass(frozen=True)
class ToolResult:
    """The answer to a call, authored by the tool (``python``, ``functions.get_weather``) on the call's channel.

    ``status``: ``ok``; ``error`` (the tool ran and failed: an exception, a timeout, a crash); ``denied`` (the
    user said no); ``invalid`` (arguments not a JSON object, or not the function's parameters); ``unknown`` (no
    such tool); ``external`` (not run here: the caller of ``gptoss run --json`` runs it). Only ``ok`` and
    ``error`` mean the tool ran.
    """

    author: str
    content: str
    status: ResultStatus = "ok"
    channel: str | None = None

    @property
    def is_error(self) -> bool:
        return self.status != "ok"

    def as_message(self) -> dict[str, Any]:
        """The harmony renderer's message dict for this result."""
        message: dict[str, Any] = {"role": "tool", "name": self.author, "content": self.content}
        if self.channel is not None:
            message["channel"] = self.channel
        return message


def clip(head: str, max_chars: int, *, tail: str = "", omitted: int = 0) -> str:
    """Fit output into about ``max_chars`` by cutting out its middle, with a marker that says how much is gone.

    It keeps the first two thirds and the last third of the budget (an error usually sits at the end), and
    gives one side's unused share to the other. ``head`` and ``tail`` are the two sides of a gap of ``omitted``
    characters already cut out (a large output read only at its ends); without a gap they are one text.
    """
    if not omitted:
        text = head + tail
        if len(text) <= max_chars:
            return text
        cut = len(text) - (max_chars - max_chars * 2 // 3)
        head, tail = text[:cut], text[cut:]
    keep_head = min(len(head), max_chars * 2 // 3)
    keep_tail = min(len(tail), max_chars - keep_head)
    keep_head = min(len(head), max_chars - keep_tail)
    omitted += len(head) - keep_head + len(tail) - keep_tail
    marker = f"\n[... output truncated: {omitted:,} characters omitted ...]\n"
    return head[:keep_head] + marker + tail[len(tail) - keep_tail :]
