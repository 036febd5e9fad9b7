"""Incremental, lenient parser of the model's harmony output: feed ids one by one, get events.

    parser = Parser(tokenizer)                  # starts inside a header: the prompt ended with <|start|>assistant
    for token_id in generated:
        for event in parser.feed(token_id): ...
    for event in parser.finish(): ...            # end of stream (max tokens, interrupt)

Events, in order for one message: ``MessageStart`` (once ``<|message|>`` closes the header), ``TextDelta``
(complete UTF-8 text only), ``MessageEnd`` (the whole message and the token that ended it), then ``ToolCall``
when an assistant message has a recipient (whatever its channel: the ``to=`` decides, spec §7 pitfall 3), and
``TurnEnd`` when sampling stopped (``<|return|>``, ``<|call|>``, ``<|endoftext|>``, or the end of the stream).
``FormatIssue`` reports malformed output that the parser recovered from.

It never raises. Leniency (spec §5, §7): the recipient before or after the channel; ``<|constrain|>json`` with or
without a space before it and ``final <|constrain|>json`` (a content type, never a recipient); a stop token right
after ``<|end|>``; text with no header at all (a refusal) becomes a message; ``<|start|>`` or ``<|channel|>`` inside
content closes the message that forgot its ``<|end|>``; a channel glued to junk (``commentary?``) is recovered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gptoss_cli.harmony.tokenizer import (
    CALL,
    CHANNEL,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    SAMPLING_STOP_IDS,
    START,
    Tokenizer,
)

CHANNELS = ("analysis", "commentary", "final")
ROLES = ("system", "developer", "user", "assistant", "tool")
# Recipients whose message is code, not JSON arguments.
CODE_RECIPIENTS = frozenset({"python"})
# A header longer than this is not a header: its text is shown as content (a refusal written without one).
MAX_HEADER_TOKENS = 128
_CHANNEL_TEXT = "<|channel|>"
_CONSTRAIN_TEXT = "<|constrain|>"
_MESSAGE_STOPS = frozenset({END, RETURN, CALL, ENDOFTEXT})


@dataclass(frozen=True)
class Header:
    role: str
    name: str | None = None  # a tool author's name ("functions.x") when role is "tool"
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class MessageStart:
    role: str
    channel: str | None
    recipient: str | None
    content_type: str | None
    name: str | None = None


@dataclass(frozen=True)
class TextDelta:
    channel: str | None
    text: str
    recipient: str | None = None


@dataclass(frozen=True)
class MessageEnd:
    role: str
    channel: str | None
    recipient: str | None
    content_type: str | None
    text: str
    stop_token: int | None  # <|end|>, <|return|>, <|call|>, <|endoftext|>; None if the stream ended first
    name: str | None = None


@dataclass(frozen=True)
class ArgumentError:
    """Why a tool call's arguments are not usable JSON, with where it went wrong (1-based)."""

    message: str
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class ToolCall:
    recipient: str
    channel: str | None
    content_type: str | None
    raw: str  # the message text: JSON arguments, or code for CODE_RECIPIENTS
    arguments: Any = None  # parsed JSON; None for code or when error is set
    error: ArgumentError | None = None


@dataclass(frozen=True)
class TurnEnd:
    stop_token: int | None  # <|return|>, <|call|>, <|endoftext|>; None when the stream just ended


@dataclass(frozen=True)
class FormatIssue:
    message: str
    raw: str = ""


Event = MessageStart | TextDelta | MessageEnd | ToolCall | TurnEnd | FormatIssue


def parse_arguments(recipient: str, raw: str) -> tuple[Any, ArgumentError | None]:
    """JSON arguments of a call; empty means ``{}``, a lone object wrapped in ``[...]`` is unwrapped."""
    if recipient in CODE_RECIPIENTS:
        return None, None
    text = raw.strip()
    if not text:
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, ArgumentError(f"arguments are not valid JSON: {exc.msg}", exc.lineno, exc.colno)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if not isinstance(value, dict):
        return None, ArgumentError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value, None


def _take_channel(text: str, issues: list[str]) -> tuple[str | None, str]:
    """Cut every ``<|channel|>value`` out of the header text; the first value is the channel."""
    channel = None
    while (at := text.find(_CHANNEL_TEXT)) >= 0:
        after = text[at + len(_CHANNEL_TEXT) :]
        end = next((i for i, c in enumerate(after) if c.isspace() or c == "<"), len(after))
        value, rest = after[:end], after[end:]
        if "to=" in value[1:]:  # "commentaryto=functions.x": give the recipient back
            cut = value.index("to=", 1)
            value, rest = value[:cut], " " + value[cut:] + rest
        if value and value not in CHANNELS:
            known = next((c for c in CHANNELS if c in value), None)
            issues.append(f"channel {value!r} read as {known!r}" if known else f"unknown channel {value!r}")
            value = known or value
        if not value:
            issues.append("empty channel")
        if channel is None and value:
            channel = value
        text = text[:at] + " " + rest
    return channel, text


def parse_header(text: str, role: str | None) -> tuple[Header, list[str], list[str]]:
    """Parse decoded header text (special tokens spelled out).

    ``role`` is the role the prompt already gave (``<|start|>assistant``) or None. Returns the header, the parts
    left over (not header metadata) and issues found on the way.
    """
    issues: list[str] = []
    channel, text = _take_channel(text, issues)
    parts = text.replace(_CONSTRAIN_TEXT, " " + _CONSTRAIN_TEXT).split()
    name = None
    if role is None:
        if parts and parts[0] in ROLES:
            role = parts.pop(0)
        elif parts and not parts[0].startswith(("to=", _CONSTRAIN_TEXT)) and parts[0] not in CHANNELS:
            role, name = "tool", parts.pop(0)
        else:
            role = "assistant"
    elif parts and parts[0] == role:
        parts.pop(0)
    recipient = content_type = None
    others: list[str] = []
    while parts:
        part = parts.pop(0)
        if part.startswith("to=") and recipient is None:
            recipient = part[3:] or None
        elif part.startswith(_CONSTRAIN_TEXT) and content_type is None:
            if part == _CONSTRAIN_TEXT and parts and not parts[0].startswith("to="):
                part += parts.pop(0)
            content_type = part
        elif part in CHANNELS and channel is None:
            channel = part
        else:
            others.append(part)
    leftover = []
    for part in others:
        if recipient is None and ("." in part or part in CODE_RECIPIENTS):
            recipient = part
        elif content_type is None:
            content_type = part
        else:
            leftover.append(part)
    return Header(role, name, channel, recipient, content_type), leftover, issues


class Parser:
    """Token-by-token harmony parser over one model output stream (see module docstring)."""

    def __init__(self, tokenizer: Tokenizer, role: str | None = "assistant") -> None:
        self._tokenizer = tokenizer
        self._next_role = role  # the role the prompt opened, for the first header only
        self._state = "header" if role is not None else "expect_start"
        self._header_ids: list[int] = []
        self._header: Header | None = None
        self._text: list[str] = []
        self._decoder = tokenizer.stream_decoder()
        self._turn_over = False

    @property
    def in_header(self) -> bool:
        """True while a header is being read (the UI can show "thinking..." before the channel is known)."""
        return self._state == "header"

    def feed(self, token_id: int) -> list[Event]:
        events: list[Event] = []
        if self._state == "expect_start":
            self._expect_start(token_id, events)
        elif self._state == "header":
            self._in_header(token_id, events)
        else:
            self._in_content(token_id, events)
        return events

    def feed_all(self, ids: Iterable[int]) -> list[Event]:
        return [event for token_id in ids for event in self.feed(token_id)]

    def finish(self) -> list[Event]:
        """The stream ended (without a stop token, or after one): flush what is pending."""
        events: list[Event] = []
        if self._state == "header":
            self._header_as_content(None, events)
        elif self._state == "content":
            self._end_message(None, events)
        if not self._turn_over:
            self._turn_over = True
            events.append(TurnEnd(None))
        return events

    def _expect_start(self, token_id: int, events: list[Event]) -> None:
        if token_id == START:
            self._open_header(None)
        elif token_id in SAMPLING_STOP_IDS:
            self._stop(token_id, events)
        elif token_id == END:
            events.append(FormatIssue("<|end|> outside a message"))
        else:  # a message that forgot <|start|>: read it as an assistant header
            events.append(FormatIssue("message without <|start|>", self._tokenizer.decode([token_id])))
            self._open_header("assistant")
            self._in_header(token_id, events)

    def _open_header(self, role: str | None) -> None:
        self._state = "header"
        self._next_role = role
        self._header_ids = []

    def _in_header(self, token_id: int, events: list[Event]) -> None:
        if token_id == MESSAGE:
            self._start_content(events)
        elif token_id in _MESSAGE_STOPS:
            self._header_as_content(token_id, events)
            self._stop(token_id, events)
        elif token_id == START:
            if self._header_ids:
                events.append(FormatIssue("header abandoned", self._tokenizer.decode(self._header_ids)))
            self._open_header(None)
        elif len(self._header_ids) >= MAX_HEADER_TOKENS:
            events.append(FormatIssue("header never closed; showing it as text"))
            self._header_ids.append(token_id)
            self._header_as_content(None, events, keep_open=True)
        else:
            self._header_ids.append(token_id)

    def _start_content(self, events: list[Event]) -> None:
        header, leftover, issues = parse_header(self._tokenizer.decode(self._header_ids), self._next_role)
        for issue in issues:
            events.append(FormatIssue(issue))
        if leftover:
            events.append(FormatIssue("unexpected words in message header", " ".join(leftover)))
        self._begin(header, events)

    def _begin(self, header: Header, events: list[Event]) -> None:
        self._header, self._text, self._next_role, self._state = header, [], None, "content"
        self._turn_over = False
        self._decoder = self._tokenizer.stream_decoder()
        events.append(MessageStart(header.role, header.channel, header.recipient, header.content_type, header.name))

    def _header_as_content(self, stop: int | None, events: list[Event], keep_open: bool = False) -> None:
        """A header that never reached <|message|>: its text (minus role and channel) is the message."""
        issues: list[str] = []
        channel, text = _take_channel(self._tokenizer.decode(self._header_ids), issues)
        role = self._next_role or "assistant"
        text = text.strip()
        if text.split(maxsplit=1)[:1] == [role]:
            text = text[len(role) :].lstrip()
        self._header_ids = []
        if not text and channel is None and not keep_open:
            self._state = "expect_start"
            return
        if stop is not None:
            events.append(FormatIssue("message without <|message|>", text))
        self._begin(Header(role, None, channel), events)
        if text:
            self._text.append(text)
            events.append(TextDelta(channel, text, None))
        if not keep_open:
            self._end_message(stop, events)

    def _in_content(self, token_id: int, events: list[Event]) -> None:
        if token_id in _MESSAGE_STOPS:
            self._end_message(token_id, events)
            self._stop(token_id, events)
        elif token_id in (START, CHANNEL):
            events.append(FormatIssue("message ended without <|end|>"))
            self._end_message(None, events)
            if token_id == START:
                self._open_header(None)
            else:
                self._open_header("assistant")
                self._header_ids.append(token_id)
        elif self._tokenizer.is_special(token_id):
            events.append(FormatIssue("special token inside message text", self._tokenizer.decode([token_id])))
        else:
            header = self._header
            text = self._decoder.push(token_id)
            if text and header is not None:
                self._text.append(text)
                events.append(TextDelta(header.channel, text, header.recipient))

    def _end_message(self, stop: int | None, events: list[Event]) -> None:
        header = self._header or Header("assistant")
        tail = self._decoder.flush()
        if tail:
            self._text.append(tail)
            events.append(TextDelta(header.channel, tail, header.recipient))
        text = "".join(self._text)
        events.append(
            MessageEnd(header.role, header.channel, header.recipient, header.content_type, text, stop, header.name)
        )
        if header.role == "assistant" and header.recipient is not None and header.recipient != "all":
            if stop in (END, CALL, RETURN):
                arguments, error = parse_arguments(header.recipient, text)
                events.append(ToolCall(header.recipient, header.channel, header.content_type, text, arguments, error))
            else:
                events.append(FormatIssue(f"tool call to {header.recipient} cut off", text))
        self._header, self._text, self._state = None, [], "expect_start"

    def _stop(self, token_id: int, events: list[Event]) -> None:
        if token_id in SAMPLING_STOP_IDS:
            self._turn_over = True
            events.append(TurnEnd(token_id))


def parse_completion(ids: Iterable[int], tokenizer: Tokenizer, role: str | None = "assistant") -> list[MessageEnd]:
    """All messages of a finished completion (the ids after ``<|start|>assistant``)."""
    parser = Parser(tokenizer, role)
    events = parser.feed_all(ids) + parser.finish()
    return [e for e in events if isinstance(e, MessageEnd)]
