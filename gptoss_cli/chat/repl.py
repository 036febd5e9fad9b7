"""``gptoss chat``: the interactive conversation (prompt_toolkit for input, view.py for output).

Keys: Enter sends; Alt-Enter (or Esc, then Enter) adds a line; a message starting with three double quotes
runs until the closing three quotes (paste-friendly; pasted text never sends itself either, thanks to
bracketed paste).
Ctrl-C stops the reply being generated (the partial reply stays; press it twice if the model is busy reading a
long prompt) and clears the input line at the prompt; Ctrl-D on an empty line quits. Input history is kept in
the user data dir (``chat_history``). Slash commands (Tab completes them and their arguments) are in ``COMMANDS``.

Without a terminal on stdin (``gptoss chat < script.txt``), each input line is one message or command, tool
calls are denied unless ``--yes``, and output is plain text.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from rich.console import Console
from rich.table import Table

from ..errors import GptossError
from ..harmony.render import REASONING_EFFORTS
from ..tools.approval import Decision
from ..tools.call import ToolCall as ResolvedCall
from .loading import Loaded, load_model, memory_errors
from .session import Sampling, Session, new_options
from .tooling import RegistryTools, build_tools
from .view import ChatView, stats_line

COMMANDS: dict[str, str] = {
    "/help": "show this help",
    "/effort": "low|medium|high: how much the model reasons before answering",
    "/reasoning": "show|hide: stream the reasoning dimmed, or fold it to one line; alone: print the last one",
    "/system": "TEXT: developer instructions for the model; alone: show them; '/system clear' removes them",
    "/tools": "list the tools the model may call",
    "/reset": "start a new conversation",
    "/save": "FILE: save the conversation (its exact tokens and settings)",
    "/load": "FILE: resume a saved conversation exactly",
    "/stats": "tokens, speed and context use",
    "/exit": "quit (Ctrl-D also quits)",
}
ARGUMENTS = {"/effort": REASONING_EFFORTS, "/reasoning": ("show", "hide"), "/system": ("clear",)}
FENCE = '"""'
KEYS_HELP = ('Enter sends · Alt-Enter (or Esc, Enter) adds a line · """ starts a multi-line block · '
             "Ctrl-C stops a reply · Ctrl-D quits")


def history_file() -> Path:
    import platformdirs

    return platformdirs.user_data_path("gptoss", appauthor=False) / "chat_history"


def strip_fence(text: str) -> str:
    """The message inside a triple-quote block (the fences and the blank edges removed)."""
    text = text.lstrip()
    if text.startswith(FENCE):
        text = text[len(FENCE):]
        if text.rstrip().endswith(FENCE):
            text = text.rstrip()[: -len(FENCE)]
    return text.strip("\n")


def open_fence(text: str) -> bool:
    """True while a triple-quote block is still open: Enter then adds a line instead of sending."""
    return text.lstrip().startswith(FENCE) and text.count(FENCE) % 2 == 1


def resolve_command(word: str) -> str | None:
    """``/he`` -> ``/help``: a unique prefix of a command names it."""
    if word in COMMANDS or word == "/quit":
        return "/exit" if word == "/quit" else word
    matches = [c for c in COMMANDS if c.startswith(word)]
    return matches[0] if len(matches) == 1 else None


class Repl:
    """The loop: read a line, run a command or send it, draw the reply."""

    def __init__(self, session: Session, loaded: Loaded, view: ChatView, tools: RegistryTools | None = None,
                 stdin: TextIO | None = None) -> None:
        self.session = session
        self.loaded = loaded
        self.view = view
        self.console = view.console
        self.tools = tools
        self.stdin = stdin or sys.stdin
        self.interactive = self.stdin.isatty()
        self._prompt: Any = None

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.banner()
        while True:
            try:
                text = self.read()
            except KeyboardInterrupt:
                self.view.note("(Ctrl-D or /exit quits)")
                continue
            except EOFError:
                return 0
            if text is None:
                continue
            if text.startswith("/") and not text.startswith("//"):
                if not self.command(text):
                    return 0
                continue
            self.reply(text[1:] if text.startswith("//") else text)

    def read(self) -> str | None:
        """One message or command; None for an empty line."""
        if not self.interactive:
            line = self.stdin.readline()
            if not line:
                raise EOFError
            text = line.rstrip("\n")
            while open_fence(text) and (line := self.stdin.readline()):
                text += "\n" + line.rstrip("\n")
        else:
            text = self.prompt_session().prompt([("bold", ">>> ")])
        text = strip_fence(text) if text.lstrip().startswith(FENCE) else text.strip()
        return text or None

    def prompt_session(self) -> Any:
        if self._prompt is None:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory, InMemoryHistory

            path = history_file()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                history: Any = FileHistory(str(path))
            except OSError:
                history = InMemoryHistory()
            self._prompt = PromptSession(history=history, completer=SlashCompleter(), key_bindings=_key_bindings(),
                                         multiline=True, prompt_continuation="... ", complete_while_typing=True,
                                         enable_open_in_editor=True)
        return self._prompt

    def banner(self) -> None:
        s, info = self.session, self.loaded
        tools = ", ".join(s.tool_names()) or "none"
        self.view.note(f"gptoss chat · {info.label} on {info.device}", style="bold")
        self.view.note(f"context {s.context_length:,} tokens · reasoning {s.options.reasoning_effort} · "
                       f"tools: {tools}")
        for note in info.notes:
            self.view.note(note)
        if self.interactive:
            self.view.note(f"{KEYS_HELP} · /help for commands")

    # ---- a reply --------------------------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        try:
            stream = self.session.send(text)
        except GptossError as exc:
            self.view.error(exc.message, exc.hint)
            return
        with _ctrl_c_cancels(self.session), _no_echo(self.stdin):
            try:
                with memory_errors("generating", self.loaded.label):
                    self.view.render(stream)
            except KeyboardInterrupt:
                stream.close()
                self.session.last.finish_reason = "cancelled"
            except GptossError as exc:
                stream.close()
                self.view.error(exc.message, exc.hint)
                return
            except Exception as exc:  # keep the session alive; --debug shows the traceback
                stream.close()
                if _debug():
                    raise
                self.view.error(f"{type(exc).__name__}: {exc}", "run with --debug for the traceback")
                return
        turn = self.session.last
        if turn.finish_reason == "cancelled":
            self.view.note("stopped · the partial reply is kept in the conversation")
        self.view.stats(turn, self.session.context_used, self.session.context_length)

    # ---- slash commands -------------------------------------------------------------------------------------
    def command(self, text: str) -> bool:
        """Run a slash command; False means quit."""
        word, _, arg = text.partition(" ")
        arg = arg.strip()
        name = resolve_command(word)
        if name is None:
            self.view.error(f"unknown command {word}", "/help lists the commands; start a message with // to send "
                                                       "text that begins with /")
            return True
        if name == "/exit":
            return False
        handler = getattr(self, "cmd_" + name[1:])
        try:
            handler(arg)
        except GptossError as exc:
            self.view.error(exc.message, exc.hint)
        return True

    def cmd_help(self, arg: str) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        for name, text in COMMANDS.items():
            table.add_row(name, text)
        self.console.print(table)
        self.view.note(KEYS_HELP)

    def cmd_effort(self, arg: str) -> None:
        if arg not in REASONING_EFFORTS:
            self.view.error(f"/effort takes {'|'.join(REASONING_EFFORTS)}",
                            f"now: {self.session.options.reasoning_effort}")
            return
        self.session.set_options(reasoning_effort=arg)
        self.view.note(f"reasoning effort: {arg} (the system message changed: the next reply re-reads the "
                       "conversation)")

    def cmd_reasoning(self, arg: str) -> None:
        if arg == "":
            self.view.reasoning(self.session.last.reasoning)
        elif arg in ("show", "hide"):
            self.view.show_reasoning = arg == "show"
            self.view.note(f"reasoning: {'shown' if arg == 'show' else 'folded to one line'}")
        else:
            self.view.error("/reasoning takes show or hide")

    def cmd_system(self, arg: str) -> None:
        if not arg:
            current = self.session.options.instructions
            self.view.note(f"developer instructions: {current}" if current else "no developer instructions")
            return
        self.session.set_options(instructions=None if arg == "clear" else arg)
        self.view.note("developer instructions " + ("removed" if arg == "clear" else "set") +
                       " (the next reply re-reads the conversation)")

    def cmd_tools(self, arg: str) -> None:
        if self.tools is None:
            self.view.note("no tools enabled (drop --no-python, or add --tools FILE for your own functions)")
            return
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        for name, description, trusted in self.tools.listing():
            first = description.strip().splitlines()[0] if description.strip() else ""
            table.add_row(name, "runs without asking" if trusted else "asks before running", first)
        self.console.print(table)

    def cmd_reset(self, arg: str) -> None:
        self.session.reset()
        self.view.note("new conversation")

    def cmd_save(self, arg: str) -> None:
        if not arg:
            self.view.error("/save needs a file name")
            return
        path = self.session.save(arg, model=self.loaded.label)
        self.view.note(f"saved {self.session.messages} messages ({self.session.context_used:,} tokens) to {path}")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            self.view.error("/load needs a file name")
            return
        raw = self.session.load(arg)
        model = raw.get("model") or "?"
        self.view.note(f"loaded {self.session.messages} messages ({self.session.context_used:,} tokens) from {arg}"
                       f" · saved with {model} · reasoning {self.session.options.reasoning_effort}")
        saved = self.session.tool_names()
        running = [name for name, _, _ in self.tools.listing()] if self.tools is not None else []
        if sorted(saved) != sorted(running):  # the tokens say what the model was told; calls go to this chat's tools
            self.view.note(f"the conversation was saved with tools: {', '.join(saved) or 'none'}; this chat runs: "
                           f"{', '.join(running) or 'none'}", style="yellow")

    def cmd_stats(self, arg: str) -> None:
        s, info = self.session, self.loaded
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        share = 100 * s.context_used / s.context_length
        table.add_row("model", f"{info.label} on {info.device}, loaded in {info.load_seconds:.1f} s")
        table.add_row("context", f"{s.context_used:,} / {s.context_length:,} tokens ({share:.0f}%) in "
                                 f"{s.messages} messages")
        if s.turns:
            table.add_row("last reply", stats_line(s.last, s.context_used, s.context_length))
            replies = f"{len(s.turns)} repl{'ies' if len(s.turns) > 1 else 'y'}"
            table.add_row("session", f"{replies} · {sum(t.completion_tokens for t in s.turns):,} "
                                     f"tokens generated · {sum(t.prefill_tokens for t in s.turns):,} prefilled · "
                                     f"{sum(t.reused_tokens for t in s.turns):,} reused from the cache")
        table.add_row("settings", f"reasoning {s.options.reasoning_effort} · temperature {s.sampling.temperature} · "
                                  f"max tokens {s.sampling.max_tokens or 'context'}")
        self.console.print(table)


def approval_question(view: ChatView, interactive: bool) -> Callable[[ResolvedCall], Decision]:
    """Asked before a tool runs (the call is already on screen): once, always for this tool, or no."""

    def ask(call: ResolvedCall) -> Decision:
        if not interactive:
            view.note(f"denied {call.tool}: no terminal to ask on (start with --yes to allow tools)")
            return "deny"
        from prompt_toolkit import prompt

        while True:
            try:
                answer = prompt([("bold yellow", f"Run {call.tool}? [y]es once · [a]lways for {call.tool} · [n]o: ")])
            except EOFError:
                return "deny"
            choice = answer.strip().lower()[:1]
            if choice in ("y", "a", "n", ""):
                return "once" if choice == "y" else "always" if choice == "a" else "deny"

    return ask


def _debug() -> bool:
    import os

    return os.environ.get("GPTOSS_DEBUG") == "1"


@contextmanager
def _ctrl_c_cancels(session: Session) -> Iterator[None]:
    """While a reply streams: the first Ctrl-C asks the session to stop after the current token; a second one
    interrupts whatever is running (a long prefill, a tool)."""
    presses = 0

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal presses
        presses += 1
        session.cancel()
        if presses > 1:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C keeps its default meaning
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _no_echo(stdin: TextIO) -> Iterator[None]:
    """While a reply streams, keys typed ahead are not echoed (an echoed Enter would shift the live region);
    prompt_toolkit shows them at the next prompt. POSIX terminals only; Ctrl-C still interrupts."""
    try:
        import termios
    except ImportError:  # Windows
        yield
        return
    try:
        fd = stdin.fileno()
        saved = termios.tcgetattr(fd) if stdin.isatty() else None
    except (OSError, ValueError, AttributeError, termios.error):
        saved = None
    if saved is None:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _key_bindings() -> Any:
    from prompt_toolkit.filters import completion_is_selected
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @kb.add("enter", filter=completion_is_selected)
    def _take_completion(event: Any) -> None:
        event.current_buffer.complete_state = None  # keep the chosen completion; the next Enter sends

    @kb.add("enter", filter=~completion_is_selected)
    def _send(event: Any) -> None:
        buffer = event.current_buffer
        if open_fence(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @kb.add("c-j", filter=~completion_is_selected)  # what Enter typed ahead during a reply arrives as (ICRNL)
    def _send_typed_ahead(event: Any) -> None:
        _send(event)

    @kb.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("c-c")
    def _clear(event: Any) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt)

    return kb


class SlashCompleter(Completer):
    """Completes command names, their fixed arguments, and file paths for /save and /load."""

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        if " " not in text:
            for name, help_text in COMMANDS.items():
                if name.startswith(text):
                    yield Completion(name, -len(text), display_meta=help_text)
            return
        word, _, arg = text.partition(" ")
        name = resolve_command(word)
        if name in ARGUMENTS:
            for value in ARGUMENTS[name]:
                if value.startswith(arg):
                    yield Completion(value, -len(arg))
        elif name in ("/save", "/load"):
            yield from PathCompleter(expanduser=True).get_completions(Document(arg), complete_event)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    device: str = "auto"
    context: int | None = None
    plan_json: str | None = None
    models_dir: str | None = None
    effort: str = "medium"
    system: str | None = None
    sampling: Sampling = Sampling()
    python: bool = True
    tools_file: str | None = None
    yes: bool = False


def run_chat(request: ChatRequest) -> int:
    """Load the model and run the REPL until the user quits; returns the exit code."""
    console = Console(highlight=False)
    loaded = load_model(request.model, request.device, request.context, request.plan_json, request.models_dir,
                        interactive=sys.stdin.isatty())
    view = ChatView(console)
    tools = build_tools(request.python, request.tools_file, approval_question(view, sys.stdin.isatty()), request.yes)
    try:
        session = Session(loaded.engine, loaded.tokenizer, new_options(request.effort, request.system),
                          request.sampling, tools)
        return Repl(session, loaded, view, tools).run()
    finally:
        if tools is not None:
            tools.close()
