"""How a chat looks in the terminal (rich): reasoning dimmed and apart from the answer, the answer as Markdown.

On a terminal the answer streams as plain text in a live region that shows its last screenful, and is replaced
by its Markdown rendering once complete: nothing is re-laid-out while it streams, and the scrollback keeps
only the rendered answer. The terminal's line wrapping is off while the region is live, so its height is
always what rich will erase, whatever the text's scripts. Reasoning streams dimmed (``show``) or collapses to
a one-line summary (``hide``).
Off a terminal (a pipe, a file, TERM=dumb) everything is written once, as plain text, with no cursor tricks.
Colours follow rich, which honours NO_COLOR (and FORCE_COLOR).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.padding import Padding
from rich.segment import Segment
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.text import Text

from ..harmony import MessageEnd, MessageStart, TextDelta, ToolCall
from .session import ToolFinished, TurnResult

TOOL_OUTPUT_LINES = 8  # lines of a tool's output shown in the transcript (the model gets all of it)
REFRESH_PER_SECOND = 12


def stats_line(turn: TurnResult, context_used: int, context_length: int) -> str:
    """``62 tokens · 41.3 tok/s · TTFT 0.12 s · prompt 1,234 (1,100 cached) · context 1,300 / 8,192 (16%)``."""
    parts = [f"{turn.completion_tokens:,} tokens"]
    if turn.decode_tokens_per_second:
        parts.append(f"{turn.decode_tokens_per_second:,.1f} tok/s")
    parts.append(f"TTFT {turn.ttft_seconds:.2f} s")
    parts.append(f"prompt {turn.prompt_tokens:,} ({turn.reused_tokens:,} cached)")
    if turn.tool_calls:
        parts.append(f"{len(turn.tool_calls)} tool call{'s' if len(turn.tool_calls) > 1 else ''}")
    share = 100 * context_used / context_length if context_length else 0.0
    parts.append(f"context {context_used:,} / {context_length:,} ({share:.0f}%)")
    if turn.finish_reason in ("length", "context", "cancelled", "tool_limit"):
        parts.append({"length": "cut at --max-tokens", "context": "context full", "cancelled": "stopped",
                      "tool_limit": "tool-call limit reached"}[turn.finish_reason])
    return " · ".join(parts)


class _Tail:
    """The last screenful of a growing text (a live region taller than the screen could not be redrawn)."""

    def __init__(self) -> None:
        self.text = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = max(console.size.height - 2, 3)
        lines = console.render_lines(Text(self.text), options, pad=False)
        for line in lines[-height:]:
            yield from line
            yield Segment.line()


@dataclass
class _Block:
    """One message being shown."""

    kind: str  # "reasoning", "answer", "call"
    started: float = field(default_factory=time.perf_counter)
    text: str = ""
    live: Live | None = None
    tail: _Tail | None = None


class ChatView:
    """Draws a session's event stream for the REPL."""

    def __init__(self, console: Console, show_reasoning: bool = True) -> None:
        self.console = console
        self.show_reasoning = show_reasoning
        self.fancy = console.is_terminal and not console.is_dumb_terminal
        self._block: _Block | None = None
        self._waiting: Live | None = None

    # ---- one reply -------------------------------------------------------------------------------------------
    def render(self, events: Iterable[object]) -> None:
        """Consume and draw a reply's events; leaves the screen clean if interrupted midway."""
        self._wait()
        try:
            for event in events:
                self.handle(event)
        finally:
            self._done_waiting()
            self.close_block()

    def handle(self, event: object) -> None:
        if isinstance(event, MessageStart):
            self._done_waiting()
            self.close_block()
            self._open(event)
        elif isinstance(event, TextDelta):
            self._add(event.text)
        elif isinstance(event, MessageEnd):
            self.close_block()
        elif isinstance(event, ToolCall):
            self._done_waiting()
            self.show_call(event)
        elif isinstance(event, ToolFinished):
            self.show_result(event)
            self._wait()  # the model now reads the tool's answer

    def _wait(self) -> None:
        """A spinner while the model reads its prompt (before the first token of a message shows)."""
        if self.fancy and self._waiting is None:
            self._waiting = self._live(Spinner("dots", Text(" …", style="dim")))
            self._waiting.start()

    def _live(self, renderable: RenderableType) -> Live:
        """A region redrawn in place and erased when stopped (its final content is printed separately)."""
        return Live(renderable, console=self.console, transient=True, refresh_per_second=REFRESH_PER_SECOND,
                    redirect_stdout=False, redirect_stderr=False)

    def _done_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.stop()
            self._waiting = None

    def _open(self, start: MessageStart) -> None:
        if start.role != "assistant":
            return
        if start.recipient not in (None, "all"):
            block = _Block("call")
            if self.fancy:
                block.live = self._live(Spinner("dots", Text(f" calling {start.recipient}…", style="dim")))
        elif start.channel == "analysis":
            block = _Block("reasoning")
            if self.show_reasoning:
                self.console.print(Text("Thinking: ", style="dim bold"), end="")
            elif self.fancy:
                block.live = self._live(self._thinking(block))
        else:
            block = _Block("answer")
            if self.fancy:
                block.tail = _Tail()
                block.live = self._live(block.tail)
        if block.live is not None:
            if block.tail is not None:
                self._autowrap(False)
            block.live.start()
        self._block = block

    def _autowrap(self, on: bool) -> None:
        """DECAWM. Off while the live answer is redrawn: a line the terminal measures wider than rich does (some
        scripts, emoji) is then clipped instead of wrapped, so the region's height stays what rich erases."""
        if not self.console.legacy_windows:
            self.console.file.write("\x1b[?7h" if on else "\x1b[?7l")
            self.console.file.flush()

    @staticmethod
    def _thinking(block: _Block) -> Spinner:
        words = len(block.text.split())
        return Spinner("dots", Text(f" thinking… {words} words", style="dim"))

    def _add(self, text: str) -> None:
        block = self._block
        if block is None:
            return
        block.text += text
        if block.kind == "reasoning":
            if self.show_reasoning:
                self.console.print(Text(text, style="dim italic"), end="", soft_wrap=True)
            elif block.live is not None:
                block.live.update(self._thinking(block))
        elif block.kind == "answer":
            if block.tail is not None:
                block.tail.text = block.text
            else:
                self.console.print(Text(text), end="", soft_wrap=True)

    def close_block(self) -> None:
        block, self._block = self._block, None
        if block is None:
            return
        if block.live is not None:
            block.live.stop()
            if block.tail is not None:
                self._autowrap(True)
        if block.kind == "reasoning":
            if self.show_reasoning:
                self.console.print()
            else:
                seconds = time.perf_counter() - block.started
                self.console.print(Text(f"Thought for {seconds:.1f} s ({len(block.text.split())} words) · "
                                        "/reasoning show to see it", style="dim"))
        elif block.kind == "answer":
            if block.tail is not None:
                if block.text.strip():
                    self.console.print(Markdown(block.text))
            else:
                self.console.print()

    # ---- tools -----------------------------------------------------------------------------------------------
    def show_call(self, call: ToolCall) -> None:
        self.close_block()
        self.console.print(Text(f"Tool call: {call.recipient}", style="bold yellow"))
        self.console.print(Padding(call_body(call), (0, 0, 0, 2)))

    def show_result(self, done: ToolFinished) -> None:
        label = {"ok": "output", "error": "error", "denied": "denied", "invalid": "bad arguments",
                 "unknown": "unknown tool", "limit": "not run (limit)"}.get(done.status, done.status)
        style = "dim" if done.status == "ok" else "yellow"
        lines = done.output.splitlines() or [""]
        shown = "\n".join(lines[:TOOL_OUTPUT_LINES])
        more = len(lines) - TOOL_OUTPUT_LINES
        body = Text(shown, style="dim")
        if more > 0:
            body.append(f"\n… {more} more lines", style="dim italic")
        self.console.print(Text(f"{done.call.recipient} {label}:", style=style))
        self.console.print(Padding(body, (0, 0, 0, 2)))

    # ---- around replies --------------------------------------------------------------------------------------
    def stats(self, turn: TurnResult, context_used: int, context_length: int) -> None:
        self.note(stats_line(turn, context_used, context_length))

    def note(self, text: str, style: str = "dim") -> None:
        self.console.print(Text(text, style=style), soft_wrap=not self.fancy)

    def error(self, message: str, hint: str | None = None) -> None:
        text = Text("error: ", style="bold red")
        text.append(message)
        self.console.print(text)
        if hint:
            self.console.print(Text(f"hint: {hint}", style="dim"))

    def reasoning(self, text: str) -> None:
        """Print a whole reasoning trace (``/reasoning`` with no argument expands the last one)."""
        self.console.print(Text(text or "(no reasoning in the last reply)", style="dim italic"))


def call_body(call: ToolCall) -> Syntax | Text:
    """The call for the approval prompt: code highlighted as Python, JSON arguments pretty-printed."""
    import json

    if call.recipient == "python" or call.recipient.startswith("python."):
        return Syntax(call.raw.strip("\n"), "python", theme="ansi_dark", word_wrap=True)
    if call.error is None and call.arguments is not None:
        return Syntax(json.dumps(call.arguments, indent=2, ensure_ascii=False), "json", theme="ansi_dark",
                      word_wrap=True)
    return Text(call.raw)
