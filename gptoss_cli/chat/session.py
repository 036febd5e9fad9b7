"""One conversation: the user's turns in, the model's events out, with tokens as the history's truth.

    session = Session(engine, tokenizer, options, tools=runner)
    for event in session.send("What is 17 * 23?"):   # harmony parser events + ToolFinished + RoundDone
        ...
    session.last                                     # TurnResult: final, reasoning, tool calls, stats

Each turn appends the user's message as tokens (harmony ``Conversation``) and hands the whole history to the
engine, which keeps the KV cache of the longest common prefix: a follow-up turn prefills only its new tokens (and
the turn before it, whose reasoning the harmony rules drop). Generated ids are kept verbatim.

Tool loop: when a generation ends on ``<|call|>``, the call goes to the ``ToolRunner``, which resolves it, asks
for approval and runs it; its answer is appended as a tool message and generation continues. An unknown tool,
arguments that are not JSON, a denial or a failing tool are answered to the model as errors: the turn goes on.
At most ``max_tool_calls`` calls run per turn; the next one is answered "not run" and the turn ends.

Ctrl-C: ``cancel()`` (safe from a signal handler) stops generation after the current token; a KeyboardInterrupt
raised inside the engine does the same. Either way the partial reply stays in the history, closed with <|end|>.

The session knows the engine only through ``ChatEngine`` (engine/scripted.py) and never imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Protocol, Union

from ..engine.scripted import ChatEngine
from ..errors import ContextLengthError, GptossError
from ..harmony import (
    CALL,
    ChatOptions,
    Conversation,
    FunctionTool,
    MessageEnd,
    MessageStart,
    Parser,
    Tokenizer,
    ToolCall,
    ToolNamespace,
    TurnEnd,
)
from ..harmony.parser import Event as ParserEvent

SESSION_FORMAT = "gptoss-session"
SESSION_VERSION = 1
DEFAULT_MAX_TOOL_CALLS = 8


class SessionFileError(GptossError):
    """A /load file that is not a gptoss session, or that no longer replays to its own tokens."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int | None = None  # generated tokens per turn (reasoning included); None: until the context is full


@dataclass(frozen=True)
class ToolOutput:
    """A tool's answer. ``status``: ok, error (the tool failed), denied (by the user), invalid (arguments the tool
    cannot take), unknown (no such tool), external (the caller of ``gptoss run --json`` runs it: the turn ends
    with the call). ``author`` names the tool in the result message (default: the recipient)."""

    content: str
    status: str = "ok"
    author: str | None = None


class ToolRunner(Protocol):
    """The tools room as the session sees it (chat/tooling.py adapts tools/registry.py to it)."""

    def builtin_tools(self) -> tuple[ToolNamespace, ...]: ...  # rendered into the system message

    def functions(self) -> tuple[FunctionTool, ...]: ...  # rendered into the developer message

    def run(self, call: ToolCall) -> ToolOutput:
        """Resolve the call, ask for approval, run it. Never raises for anything the model wrote."""
        ...


@dataclass(frozen=True)
class ToolFinished:
    """A tool call was answered (``status`` as in ToolOutput, or limit: too many calls this turn, not run)."""

    call: ToolCall
    status: str
    output: str


@dataclass(frozen=True)
class RoundDone:
    """One engine generation finished (a turn has one per tool round)."""

    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    finish_reason: str


Event = Union[ParserEvent, ToolFinished, RoundDone]


@dataclass
class RoundStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    ttft_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    finish_reason: str = ""


@dataclass
class ToolRecord:
    recipient: str
    channel: str | None
    raw: str
    arguments: Any
    status: str
    output: str


@dataclass
class TurnResult:
    """What one ``send`` produced. ``finish_reason``: stop, length (max tokens), context (context full),
    cancelled, tool_limit, tool_calls (ended on a call the caller runs)."""

    final: str = ""
    reasoning: str = ""
    commentary: str = ""  # preambles the model addressed to the user on the commentary channel
    tool_calls: list[ToolRecord] = field(default_factory=list)
    rounds: list[RoundStats] = field(default_factory=list)
    reasoning_tokens: int = 0
    finish_reason: str = ""
    seconds: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return self.rounds[0].prompt_tokens if self.rounds else 0

    @property
    def reused_tokens(self) -> int:
        return self.rounds[0].reused_tokens if self.rounds else 0

    @property
    def prefill_tokens(self) -> int:
        return sum(r.prefill_tokens for r in self.rounds)

    @property
    def completion_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.rounds)

    @property
    def ttft_seconds(self) -> float:
        return self.rounds[0].ttft_seconds if self.rounds else 0.0

    @property
    def prefill_seconds(self) -> float:
        return sum(r.prefill_seconds for r in self.rounds)

    @property
    def decode_seconds(self) -> float:
        return sum(r.decode_seconds for r in self.rounds)

    @property
    def decode_tokens_per_second(self) -> float:
        steps = sum(max(r.generated_tokens - 1, 0) for r in self.rounds)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def truncated(self) -> bool:
        return self.finish_reason in ("length", "context")


class Session:
    """One conversation over a ``ChatEngine``; see the module docstring."""

    def __init__(self, engine: ChatEngine, tokenizer: Tokenizer, options: ChatOptions = ChatOptions(),
                 sampling: Sampling = Sampling(), tools: ToolRunner | None = None,
                 max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.tools = tools
        self.max_tool_calls = max_tool_calls
        if tools is not None:
            options = replace(options, builtin_tools=tools.builtin_tools(), functions=tools.functions())
        self._options = options
        self._items: list[dict[str, Any]] = []  # {"message": dict} or {"completion": [ids]}: replayable history
        self._conversation = Conversation(tokenizer, options)
        self._cancel = False
        self.last = TurnResult()
        self.turns: list[TurnResult] = []

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def options(self) -> ChatOptions:
        return self._options

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def tokens(self) -> list[int]:
        """The history as the model sees it now."""
        return self._conversation.tokens()

    def prompt_tokens(self) -> list[int]:
        return self._conversation.prompt_tokens()

    @property
    def context_used(self) -> int:
        return len(self._conversation.tokens())

    @property
    def messages(self) -> int:
        return len(self._conversation.entries)

    def set_options(self, **changes: Any) -> None:
        """Change effort, instructions... The system/developer messages change, so the next reply re-reads the
        conversation (the engine keeps only the prefix that did not change)."""
        self._options = replace(self._options, **changes)
        self._rebuild()

    def reset(self) -> None:
        """Forget the conversation; keep the options (the system prompt stays cached in the engine)."""
        self._items.clear()
        self._rebuild()
        self.last = TurnResult()
        self.turns.clear()

    def cancel(self) -> None:
        """Stop the reply being generated after its current token (callable from a signal handler)."""
        self._cancel = True

    def _rebuild(self) -> None:
        convo = Conversation(self.tokenizer, self._options)
        for item in self._items:
            if "message" in item:
                convo.append(item["message"])
            else:
                convo.append_completion(item["completion"])
        self._conversation = convo

    def _append(self, item: dict[str, Any]) -> None:
        self._items.append(item)
        if "message" in item:
            self._conversation.append(item["message"])
        else:
            self._conversation.append_completion(item["completion"])

    # ---- a turn ---------------------------------------------------------------------------------------------
    def send(self, text: str) -> Iterator[Event]:
        """Add the user's message and generate the reply (with tool rounds), yielding events as they happen.

        Raises ContextLengthError, before anything is added, when the message does not fit the context.
        """
        self._cancel = False
        self._append({"message": {"role": "user", "content": text}})
        room = self.context_length - len(self._conversation.prompt_tokens())
        if room < 1:
            used = len(self._conversation.prompt_tokens())
            self._items.pop()
            self._rebuild()
            raise ContextLengthError(
                f"this message brings the conversation to {used:,} tokens; the context holds {self.context_length:,}",
                hint="/reset to start over (/save FILE first to keep it), or restart with a larger --context.")
        return self._turn()

    def _turn(self) -> Iterator[Event]:
        previous, result = self.last, TurnResult()
        self.last = result
        self.turns.append(result)
        started = time.perf_counter()
        calls = 0
        try:
            while True:
                call = yield from self._round(result)
                if call is None or result.finish_reason != "stop":
                    return
                calls += 1
                if calls > self.max_tool_calls:
                    yield self._answer(result, call, "limit",
                                       f"Not run: the limit of {self.max_tool_calls} tool calls per reply was reached."
                                       " Answer the user with what you have.")
                    result.finish_reason = "tool_limit"
                    return
                done = self._run_tool(result, call)
                yield done
                if done.status == "external":
                    result.finish_reason = "tool_calls"
                    return
                if self._cancel:
                    result.finish_reason = "cancelled"
                    return
        except Exception:
            if result.completion_tokens == 0 and len(result.rounds) <= 1:  # failed before any reply: as if unsent
                self._items.pop()
                self._rebuild()
                self.turns.pop()
                self.last = previous
            raise
        finally:
            result.seconds = time.perf_counter() - started

    def _round(self, result: TurnResult) -> Iterator[Event]:
        """One engine generation; returns the tool call it ended on, if any."""
        prompt = self._conversation.prompt_tokens()
        room = self.context_length - len(prompt)
        budget = room
        if self.sampling.max_tokens is not None:
            budget = min(budget, self.sampling.max_tokens - result.completion_tokens)
        if budget < 1:
            result.finish_reason = "context" if room < 1 else "length"
            return None
        parser = Parser(self.tokenizer)
        generated: list[int] = []
        call: ToolCall | None = None
        stop_token: int | None = None
        in_analysis = False
        stats = RoundStats(prompt_tokens=len(prompt))
        result.rounds.append(stats)
        s = self.sampling
        before = self.engine.stats  # engines replace their stats object when a generation starts
        stream = self.engine.generate(prompt, budget, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                      seed=s.seed, should_stop=lambda: self._cancel)
        interrupted = False
        try:
            try:
                for token in stream:
                    generated.append(token)
                    if in_analysis:
                        result.reasoning_tokens += 1
                    for event in parser.feed(token):
                        in_analysis, call, stop_token = self._note(event, result, in_analysis, call, stop_token)
                        yield event
            except KeyboardInterrupt:  # a second Ctrl-C while the engine was busy: its cache stays consistent
                interrupted = True
            for event in parser.finish():
                in_analysis, call, stop_token = self._note(event, result, in_analysis, call, stop_token)
                yield event
        finally:
            if self.engine.stats is not before:
                self._copy_stats(stats)
            if interrupted or self._cancel:
                stats.finish_reason = "cancelled"
            if generated:
                self._append({"completion": generated})
        if stats.finish_reason == "length" and budget == room:
            stats.finish_reason = "context"
        result.finish_reason = stats.finish_reason
        yield RoundDone(stats.prompt_tokens, stats.reused_tokens, stats.generated_tokens, stats.finish_reason)
        return call if stop_token == CALL else None

    def _copy_stats(self, stats: RoundStats) -> None:
        e = self.engine.stats
        stats.reused_tokens, stats.prefill_tokens = e.reused_tokens, e.prefill_tokens
        stats.prefill_seconds, stats.ttft_seconds = e.prefill_seconds, e.ttft_seconds
        stats.generated_tokens, stats.decode_seconds = e.generated_tokens, e.decode_seconds
        stats.finish_reason = e.finish_reason or "length"

    @staticmethod
    def _note(event: ParserEvent, result: TurnResult, in_analysis: bool, call: ToolCall | None,
              stop_token: int | None) -> tuple[bool, ToolCall | None, int | None]:
        if isinstance(event, MessageStart):
            in_analysis = event.channel == "analysis" and event.recipient is None
        elif isinstance(event, MessageEnd):
            in_analysis = False
            if event.role == "assistant" and event.recipient in (None, "all"):
                if event.channel == "analysis":
                    result.reasoning = _joined(result.reasoning, event.text)
                elif event.channel == "commentary":
                    result.commentary = _joined(result.commentary, event.text)
                else:
                    result.final = _joined(result.final, event.text)
        elif isinstance(event, ToolCall):
            call = event
        elif isinstance(event, TurnEnd):
            stop_token = event.stop_token
        return in_analysis, call, stop_token

    # ---- tools ---------------------------------------------------------------------------------------------
    def _run_tool(self, result: TurnResult, call: ToolCall) -> ToolFinished:
        if call.error is not None:
            where = f" (line {call.error.line}, column {call.error.column})" if call.error.line else ""
            return self._answer(result, call, "invalid",
                                f"Error: {call.error.message}{where}. Send the arguments as one JSON object.")
        if self.tools is None:
            return self._answer(result, call, "unknown",
                                f"Error: unknown tool {call.recipient!r}; no tools are enabled in this session.")
        try:
            output = self.tools.run(call)
        except KeyboardInterrupt:  # Ctrl-C at the approval question or while the tool ran
            self._cancel = True
            return self._answer(result, call, "denied", "The user interrupted this tool call.")
        except Exception as exc:  # a tool must never take the chat down
            return self._answer(result, call, "error", f"Error: the tool failed: {type(exc).__name__}: {exc}")
        if output.status == "external":
            result.tool_calls.append(ToolRecord(call.recipient, call.channel, call.raw, call.arguments, "external", ""))
            return ToolFinished(call, "external", "")
        return self._answer(result, call, output.status, output.content, output.author)

    def _answer(self, result: TurnResult, call: ToolCall, status: str, output: str,
                author: str | None = None) -> ToolFinished:
        self._append({"message": {"role": "tool", "name": author or call.recipient,
                                  "channel": call.channel or "commentary", "content": output}})
        result.tool_calls.append(ToolRecord(call.recipient, call.channel, call.raw, call.arguments, status, output))
        return ToolFinished(call, status, output)

    def tool_names(self) -> list[str]:
        """Recipients the model can address: ``python``, ``functions.NAME``..."""
        names = []
        for ns in self._options.builtin_tools:
            names += [f"{ns.name}.{t.name}" for t in ns.tools] if ns.tools else [ns.name]
        names += [f"functions.{f.name}" for f in self._options.functions]
        return names

    # ---- save / load ---------------------------------------------------------------------------------------
    def to_json(self, model: str = "") -> dict[str, Any]:
        return {"format": SESSION_FORMAT, "version": SESSION_VERSION, "model": model,
                "options": options_to_json(self._options), "sampling": asdict(self.sampling),
                "items": self._items, "tokens": self.tokens()}

    def save(self, path: str | Path, model: str = "") -> Path:
        path = Path(path).expanduser()
        try:
            path.write_text(json.dumps(self.to_json(model), ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise GptossError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def load(self, path: str | Path) -> dict[str, Any]:
        """Resume a saved session exactly: same options, same history tokens. Returns the file's contents."""
        path = Path(path).expanduser()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SessionFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SessionFileError(f"{path} is not a session file ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != SESSION_FORMAT or raw.get("version") != SESSION_VERSION:
            raise SessionFileError(f"{path} is not a gptoss session file",
                                   hint="write one with /save FILE in `gptoss chat`")
        try:
            options = options_from_json(raw["options"])
            items = [_check_item(item) for item in raw["items"]]
            tokens = [int(t) for t in raw["tokens"]]
        except (KeyError, TypeError, ValueError, GptossError) as exc:
            raise SessionFileError(f"{path} is damaged: {exc}") from None
        old = (self._options, self._items)
        self._options, self._items = options, items
        self._rebuild()
        if self.tokens() != tokens:
            self._options, self._items = old
            self._rebuild()
            raise SessionFileError(f"{path} does not replay to the tokens it was saved with",
                                   hint="it was saved with a different tokenizer (another model?)")
        if len(tokens) >= self.context_length:
            self._options, self._items = old
            self._rebuild()
            raise ContextLengthError(f"{path} holds {len(tokens):,} tokens; this context holds {self.context_length:,}",
                                     hint="restart with a larger --context")
        self.last = TurnResult()
        self.turns.clear()
        return raw


def _joined(before: str, text: str) -> str:
    """Messages of one channel across a turn's rounds, a blank line apart."""
    return f"{before}\n\n{text}" if before and text else before or text


def new_options(effort: str = "medium", instructions: str | None = None) -> ChatOptions:
    """A new conversation's settings: today's date in the system message, as the reference does."""
    return ChatOptions(reasoning_effort=effort, current_date=date.today().isoformat(),
                       instructions=instructions or None)


def _check_item(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping) and isinstance(item.get("message"), Mapping):
        return {"message": dict(item["message"])}
    if isinstance(item, Mapping) and isinstance(item.get("completion"), list):
        return {"completion": [int(t) for t in item["completion"]]}
    raise ValueError(f"unknown history item {item!r}")


def options_to_json(options: ChatOptions) -> dict[str, Any]:
    return asdict(options)


def options_from_json(raw: Mapping[str, Any]) -> ChatOptions:
    def function(f: Mapping[str, Any]) -> FunctionTool:
        return FunctionTool(str(f["name"]), str(f.get("description") or ""), f.get("parameters"))

    def namespace(ns: Mapping[str, Any]) -> ToolNamespace:
        return ToolNamespace(str(ns["name"]), ns.get("description"), tuple(function(f) for f in ns.get("tools", ())))

    data = dict(raw)
    data["builtin_tools"] = tuple(namespace(ns) for ns in data.get("builtin_tools", ()))
    data["functions"] = tuple(function(f) for f in data.get("functions", ()))
    return ChatOptions(**data)
