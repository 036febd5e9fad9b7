"""``gptoss run "prompt"``: one turn, for scripts and pipes.

The prompt comes from the argument, or from stdin when the argument is ``-`` or missing (and stdin is not a
terminal). Only the final answer goes to stdout, streamed as it is generated; reasoning goes to stderr, and only
with ``--show-reasoning``. ``--json`` prints one JSON object instead (``RESULT_SCHEMA`` below); ``--print-prompt``
prints the rendered harmony prompt with special tokens spelled out and exits without loading the weights.

Tools run only when approved: ``--yes`` approves every call; otherwise, with a terminal on stdin and stderr,
each call is shown and asked about on stderr; in a pipe, calls are denied (the model is told) and a note goes to
stderr.

Exit codes: 0 the answer is complete; 1 failure (out of memory, prompt longer than the context, ...); 2 usage
error; 3 model not found; 5 the answer was cut short (``--max-tokens`` or a full context: what was generated is
still printed, and ``finish_reason`` says which); 130 interrupted (Ctrl-C).

The ``--json`` object::

    {"model": "gpt-oss-20b",
     "final": "4",                         # the final-channel answer
     "reasoning": "Simple arithmetic.",    # the analysis channel, all rounds
     "tool_calls": [{"recipient": "python", "channel": "analysis", "input": "print(2+2)",
                     "arguments": null, "status": "ok", "output": "4\\n"}],
     "finish_reason": "stop",              # stop | length | context | cancelled | tool_limit | tool_calls
     "usage": {"prompt_tokens": 95, "cached_tokens": 0, "prefill_tokens": 95, "completion_tokens": 24,
               "reasoning_tokens": 7, "total_tokens": 119},
     "timings": {"load_seconds": 3.1, "prefill_seconds": 0.04, "ttft_seconds": 0.05, "decode_seconds": 0.5,
                 "decode_tokens_per_second": 46.0, "total_seconds": 0.6}}

A tool ``status`` is ok, error, denied, invalid (arguments it cannot take), unknown, limit (not run: too many
calls in one reply) or external: a function from a JSON tool list (``--tools tools.json``), which the caller
runs; the reply then ends on that call with ``finish_reason`` "tool_calls" and an empty ``output``.
``prompt_tokens`` is the first round's prompt; ``prefill_tokens`` counts what every round actually computed
(tool rounds reuse the cache); ``completion_tokens`` is every generated token, reasoning included.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from ..errors import ContextLengthError, ExitCode, UsageError
from ..harmony import Conversation, MessageEnd, MessageStart, TextDelta, format_tokens_visible
from ..tools.approval import Decision
from ..tools.call import ToolCall as ResolvedCall
from .loading import load_model, load_tokenizer, memory_errors
from .session import Sampling, Session, ToolFinished, TurnResult, new_options
from .tooling import RegistryTools, build_tools

EXIT_TRUNCATED = ExitCode.TRUNCATED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

_NUMBER = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}
RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gptoss run --json",
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "final", "reasoning", "tool_calls", "finish_reason", "usage", "timings"],
    "properties": {
        "model": {"type": "string"},
        "final": {"type": "string"},
        "reasoning": {"type": "string"},
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["recipient", "channel", "input", "arguments", "status", "output"],
                "properties": {
                    "recipient": {"type": "string"},
                    "channel": {"type": ["string", "null"]},
                    "input": {"type": "string"},
                    "arguments": {"type": ["object", "null"]},
                    "status": {"enum": ["ok", "error", "denied", "invalid", "unknown", "limit", "external"]},
                    "output": {"type": "string"},
                },
            },
        },
        "finish_reason": {"enum": ["stop", "length", "context", "cancelled", "tool_limit", "tool_calls"]},
        "usage": {
            "type": "object",
            "additionalProperties": False,
            "required": ["prompt_tokens", "cached_tokens", "prefill_tokens", "completion_tokens", "reasoning_tokens",
                         "total_tokens"],
            "properties": {k: _COUNT for k in ("prompt_tokens", "cached_tokens", "prefill_tokens",
                                               "completion_tokens", "reasoning_tokens", "total_tokens")},
        },
        "timings": {
            "type": "object",
            "additionalProperties": False,
            "required": ["load_seconds", "prefill_seconds", "ttft_seconds", "decode_seconds",
                         "decode_tokens_per_second", "total_seconds"],
            "properties": {k: _NUMBER for k in ("load_seconds", "prefill_seconds", "ttft_seconds", "decode_seconds",
                                                "decode_tokens_per_second", "total_seconds")},
        },
    },
}


@dataclass(frozen=True)
class RunRequest:
    prompt: str | None
    model: str
    effort: str = "medium"
    system: str | None = None
    sampling: Sampling = Sampling()
    json_out: bool = False
    show_reasoning: bool = False
    print_prompt: bool = False
    python: bool = True
    tools_file: str | None = None
    yes: bool = False
    device: str = "auto"
    context: int | None = None
    plan_json: str | None = None
    models_dir: str | None = None


def read_prompt(arg: str | None, stdin: TextIO) -> str:
    if arg is not None and arg != "-":
        return arg
    if arg is None and stdin.isatty():
        raise UsageError("give a prompt: gptoss run \"your question\"",
                         hint="or pipe it in: echo \"your question\" | gptoss run")
    text = stdin.read()
    if not text.strip():
        raise UsageError("the prompt read from stdin is empty")
    return text


def result_json(model: str, turn: TurnResult, load_seconds: float) -> dict[str, Any]:
    return {
        "model": model,
        "final": turn.final,
        "reasoning": turn.reasoning,
        "tool_calls": [{"recipient": c.recipient, "channel": c.channel, "input": c.raw,
                        "arguments": c.arguments if isinstance(c.arguments, dict) else None,
                        "status": c.status, "output": c.output} for c in turn.tool_calls],
        "finish_reason": turn.finish_reason or "stop",
        "usage": {"prompt_tokens": turn.prompt_tokens, "cached_tokens": turn.reused_tokens,
                  "prefill_tokens": turn.prefill_tokens, "completion_tokens": turn.completion_tokens,
                  "reasoning_tokens": turn.reasoning_tokens,
                  "total_tokens": turn.prompt_tokens + turn.completion_tokens},
        "timings": {"load_seconds": round(load_seconds, 4), "prefill_seconds": round(turn.prefill_seconds, 4),
                    "ttft_seconds": round(turn.ttft_seconds, 4), "decode_seconds": round(turn.decode_seconds, 4),
                    "decode_tokens_per_second": round(turn.decode_tokens_per_second, 2),
                    "total_seconds": round(turn.seconds, 4)},
    }


def pipe_question(err: TextIO, stdin: TextIO) -> Callable[[ResolvedCall], Decision]:
    """Without --yes: a terminal is asked on stderr; in a pipe the call is denied (and stderr says so)."""

    def ask(call: ResolvedCall) -> Decision:
        if stdin.isatty() and err.isatty():
            err.write(f"\nThe model wants to run {call.tool}:\n{call.text}\nRun it? [y/N] ")
            err.flush()
            return "once" if stdin.readline().strip().lower() in ("y", "yes") else "deny"
        err.write(f"gptoss: denied a call to {call.tool} (run with --yes to allow tools)\n")
        return "deny"

    return ask


def run_oneshot(request: RunRequest, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
                err: TextIO = sys.stderr) -> int:
    """One turn, printed for a script; returns the exit code."""
    prompt = read_prompt(request.prompt, stdin)
    tools = build_tools(request.python, request.tools_file, pipe_question(err, stdin), request.yes)
    try:
        return _run(request, prompt, tools, stdin, out, err)
    finally:
        if tools is not None:
            tools.close()


def _run(request: RunRequest, prompt: str, tools: RegistryTools | None, stdin: TextIO, out: TextIO,
         err: TextIO) -> int:
    options = new_options(request.effort, request.system)
    if request.print_prompt:
        tokenizer = load_tokenizer(request.model, request.models_dir)
        if tools is not None:
            from dataclasses import replace

            options = replace(options, builtin_tools=tools.builtin_tools(), functions=tools.functions())
        convo = Conversation(tokenizer, options, [{"role": "user", "content": prompt}])
        out.write(format_tokens_visible(convo.prompt_tokens(), tokenizer) + "\n")
        return 0
    interactive = stdin.isatty() and err.isatty()
    loaded = load_model(request.model, request.device, request.context, request.plan_json, request.models_dir,
                        interactive=interactive)
    session = Session(loaded.engine, loaded.tokenizer, options, request.sampling, tools)
    try:
        with memory_errors("generating", request.model):
            turn = _stream(session, prompt, request, out, err)
    except ContextLengthError as exc:
        raise ContextLengthError(exc.message.replace("this message brings the conversation", "the prompt comes"),
                                 hint="shorten the prompt, or give a larger --context (`gptoss plan` shows what "
                                      "fits)") from None
    if request.json_out:
        out.write(json.dumps(result_json(loaded.label, turn, loaded.load_seconds), ensure_ascii=False) + "\n")
    out.flush()
    if turn.finish_reason == "cancelled":
        return EXIT_INTERRUPTED
    if turn.truncated:
        what = "--max-tokens" if turn.finish_reason == "length" else f"the context ({loaded.context_length:,} tokens)"
        err.write(f"gptoss: the answer was cut short by {what}\n")
        return EXIT_TRUNCATED
    return 0


def _stream(session: Session, prompt: str, request: RunRequest, out: TextIO, err: TextIO) -> TurnResult:
    styled = err.isatty()
    dim, reset = ("\x1b[2m", "\x1b[0m") if styled else ("", "")
    channel: str | None = None
    recipient: str | None = None
    ended_with_newline = True
    wrote_answer = False
    for event in session.send(prompt):
        if isinstance(event, MessageStart):
            channel, recipient = event.channel, event.recipient
            if request.show_reasoning and channel == "analysis" and recipient is None:
                err.write(f"{dim}Thinking: ")
        elif isinstance(event, TextDelta):
            if recipient is not None:
                continue
            if channel in ("final", None):
                if not request.json_out:
                    out.write(event.text)
                    out.flush()
                    wrote_answer = True
                    ended_with_newline = event.text.endswith("\n")
            elif request.show_reasoning:
                err.write(event.text)
                err.flush()
        elif isinstance(event, ToolFinished) and request.show_reasoning:
            err.write(f"{dim}[{event.call.recipient}: {event.status}]{reset}\n")
        elif isinstance(event, MessageEnd) and request.show_reasoning and recipient is None \
                and channel not in ("final", None):
            err.write(f"{reset}\n")
    if wrote_answer and not ended_with_newline:
        out.write("\n")
    return session.last
