"""The streaming parser on model output, well-formed and malformed (spec §5, §7 pitfalls), with a fuzz test."""

from __future__ import annotations

import pytest
from harmony_support import ids_from_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_cli.harmony.parser import (
    ArgumentError,
    FormatIssue,
    MessageEnd,
    MessageStart,
    Parser,
    TextDelta,
    ToolCall,
    TurnEnd,
    parse_completion,
    parse_header,
)
from gptoss_cli.harmony.tokenizer import CALL, END, ENDOFTEXT, RETURN, START

pytest_plugins = ("harmony_fixtures",)


def _events(tokenizer, text: str, role: str | None = "assistant", finish: bool = True) -> list:
    parser = Parser(tokenizer, role)
    events = []
    for token_id in ids_from_text(tokenizer, text):
        events += parser.feed(token_id)
    return events + (parser.finish() if finish else [])


def _of(events, kind) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_reasoning_then_final(small_tokenizer):
    events = _events(
        small_tokenizer,
        "<|channel|>analysis<|message|>Simple sum.<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>",
    )
    assert _of(events, MessageStart) == [
        MessageStart("assistant", "analysis", None, None),
        MessageStart("assistant", "final", None, None),
    ]
    ends = _of(events, MessageEnd)
    assert [(m.channel, m.text, m.stop_token) for m in ends] == [
        ("analysis", "Simple sum.", END),
        ("final", "2 + 2 = 4.", RETURN),
    ]
    assert "".join(d.text for d in _of(events, TextDelta) if d.channel == "final") == "2 + 2 = 4."
    assert events[-1] == TurnEnd(RETURN)
    assert not _of(events, FormatIssue) and not _of(events, ToolCall)


def test_event_order_for_a_call(small_tokenizer):
    events = _events(
        small_tokenizer, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": 1}<|call|>'
    )
    kinds = [type(e).__name__ for e in events if not isinstance(e, TextDelta)]
    assert kinds == ["MessageStart", "MessageEnd", "ToolCall", "TurnEnd"]
    assert _of(events, ToolCall) == [ToolCall("functions.f", "commentary", "<|constrain|>json", '{"a": 1}', {"a": 1})]


@pytest.mark.parametrize(
    "header",
    [
        "<|channel|>commentary to=functions.get_weather <|constrain|>json",  # model layout
        " to=functions.get_weather<|channel|>commentary <|constrain|>json",  # harmony renderer layout
        "<|channel|>commentary to=functions.get_weather<|constrain|>json",  # no space before <|constrain|>
        "<|channel|>commentary to=functions.get_weather <|constrain|> json",  # space after it
        "<|channel|>commentaryto=functions.get_weather <|constrain|>json",  # channel glued to the recipient
    ],
)
def test_recipient_anywhere_in_the_header(small_tokenizer, header):
    events = _events(small_tokenizer, header + '<|message|>{"location": "Paris"}<|call|>')
    (call,) = _of(events, ToolCall)
    assert (call.recipient, call.channel, call.arguments) == (
        "functions.get_weather",
        "commentary",
        {"location": "Paris"},
    )
    assert call.content_type == "<|constrain|>json"


def test_tool_call_on_analysis_channel_is_still_a_call(small_tokenizer):
    events = _events(small_tokenizer, '<|channel|>analysis to=functions.lookup json<|message|>{"q": "x"}<|call|>')
    (call,) = _of(events, ToolCall)
    assert (call.recipient, call.channel, call.content_type, call.arguments) == (
        "functions.lookup",
        "analysis",
        "json",
        {"q": "x"},
    )


def test_python_call_keeps_multiline_code_raw(small_tokenizer):
    code = "import math\nfor i in range(3):\n    print(math.sqrt(i))\n"
    events = _events(small_tokenizer, f"<|channel|>analysis to=python code<|message|>{code}<|call|>")
    (call,) = _of(events, ToolCall)
    assert (call.recipient, call.content_type, call.raw, call.arguments, call.error) == (
        "python",
        "code",
        code,
        None,
        None,
    )


def test_final_with_constrain_json_is_a_content_type_not_a_recipient(small_tokenizer):
    events = _events(small_tokenizer, '<|channel|>final <|constrain|>json<|message|>{"ok": true}<|return|>')
    (end,) = _of(events, MessageEnd)
    assert (end.channel, end.recipient, end.content_type) == ("final", None, "<|constrain|>json")
    assert not _of(events, ToolCall)


@pytest.mark.parametrize("stop", ["<|return|>", "<|call|>"])
def test_stop_token_right_after_end_just_ends_the_turn(small_tokenizer, stop):
    events = _events(small_tokenizer, f"<|channel|>final<|message|>Hi.<|end|>{stop}")
    assert [(m.text, m.stop_token) for m in _of(events, MessageEnd)] == [("Hi.", END)]
    assert _of(events, TurnEnd) == [TurnEnd(RETURN if stop == "<|return|>" else CALL)]
    assert not _of(events, FormatIssue)


def test_refusal_without_any_header_becomes_a_message(small_tokenizer):
    events = _events(small_tokenizer, "I'm sorry, but I can't help with that.<|return|>")
    (end,) = _of(events, MessageEnd)
    assert (end.role, end.channel, end.text) == ("assistant", None, "I'm sorry, but I can't help with that.")
    assert _of(events, TurnEnd) == [TurnEnd(RETURN)]
    assert _of(events, FormatIssue)


def test_missing_end_before_next_start_recovers(small_tokenizer):
    events = _events(
        small_tokenizer,
        "<|channel|>analysis<|message|>thinking<|start|>assistant<|channel|>final<|message|>answer<|return|>",
    )
    assert [(m.channel, m.text) for m in _of(events, MessageEnd)] == [("analysis", "thinking"), ("final", "answer")]
    assert _of(events, FormatIssue)


def test_doubled_start_and_junk_channel(small_tokenizer):
    events = _events(
        small_tokenizer,
        "<|channel|>final<|message|>a<|end|><|start|><|start|>assistant<|channel|>commentary?<|message|>b<|end|>",
    )
    assert [(m.channel, m.text) for m in _of(events, MessageEnd)] == [("final", "a"), ("commentary", "b")]


def test_text_after_end_without_start_is_read_as_a_message(small_tokenizer):
    events = _events(small_tokenizer, "<|channel|>analysis<|message|>a<|end|>commentary<|message|>b<|end|>")
    assert [(m.channel, m.text) for m in _of(events, MessageEnd)] == [("analysis", "a"), ("commentary", "b")]


def test_bad_json_arguments_give_a_structured_error(small_tokenizer):
    events = _events(
        small_tokenizer, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": 1,\n "b": }<|call|>'
    )
    (call,) = _of(events, ToolCall)
    assert call.arguments is None and isinstance(call.error, ArgumentError)
    assert call.error.line == 2 and call.error.column is not None
    assert call.raw == '{"a": 1,\n "b": }'


def test_wrapped_or_empty_arguments_are_accepted(small_tokenizer):
    wrapped = _of(
        _events(small_tokenizer, '<|channel|>commentary to=functions.f<|message|>[{"a": 1}]<|call|>'), ToolCall
    )
    empty = _of(_events(small_tokenizer, "<|channel|>commentary to=functions.f<|message|><|call|>"), ToolCall)
    assert wrapped[0].arguments == {"a": 1} and empty[0].arguments == {}


def test_cut_off_call_is_not_executed(small_tokenizer):
    events = _events(small_tokenizer, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": ')
    assert not _of(events, ToolCall)
    assert _of(events, MessageEnd)[0].stop_token is None
    assert events[-1] == TurnEnd(None)


def test_preamble_on_commentary_is_plain_text(small_tokenizer):
    events = _events(
        small_tokenizer, "<|channel|>commentary<|message|>**Action plan**: look it up.<|end|>", finish=False
    )
    (end,) = _of(events, MessageEnd)
    assert (end.channel, end.recipient, end.text) == ("commentary", None, "**Action plan**: look it up.")
    assert not _of(events, ToolCall) and not _of(events, TurnEnd)


def test_multibyte_characters_arrive_whole(small_tokenizer):
    events = _events(small_tokenizer, "<|channel|>final<|message|>€😀<|return|>")
    deltas = [d.text for d in _of(events, TextDelta)]
    assert deltas == ["€", "😀"]


def test_parser_without_role_reads_whole_conversations(small_tokenizer):
    text = (
        "<|start|>user<|message|>hi<|end|>"
        "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>"
        "<|start|>functions.f to=assistant<|channel|>commentary<|message|>ok<|end|>"
    )
    ends = parse_completion(ids_from_text(small_tokenizer, text), small_tokenizer, role=None)
    assert [(m.role, m.name, m.recipient, m.channel) for m in ends] == [
        ("user", None, None, None),
        ("assistant", None, "functions.f", "commentary"),
        ("tool", "functions.f", "assistant", "commentary"),
    ]


def test_parse_header_reports_leftovers():
    header, leftover, issues = parse_header("<|channel|>––commentary to=functions.x json extra", "assistant")
    assert (header.channel, header.recipient, header.content_type) == ("commentary", "functions.x", "json")
    assert leftover == ["extra"] and issues


def test_endoftext_ends_the_turn(small_tokenizer):
    events = _events(small_tokenizer, "<|channel|>final<|message|>x<|endoftext|>")
    assert _of(events, MessageEnd)[0].stop_token == ENDOFTEXT
    assert _of(events, TurnEnd) == [TurnEnd(ENDOFTEXT)]


def test_overlong_header_turns_into_streamed_text(small_tokenizer):
    parser = Parser(small_tokenizer)
    assert parser.in_header
    events = parser.feed_all(small_tokenizer.encode("no header here " * 40))
    assert _of(events, MessageStart) and _of(events, TextDelta)
    assert not parser.in_header


# --- fuzz ---------------------------------------------------------------------------------------------------------

_STRUCTURAL = [START, END, RETURN, CALL, ENDOFTEXT, 200003, 200005, 200008, 199998, 200013, 201087]
_WORDS = [
    "assistant",
    "analysis",
    "commentary",
    "final",
    " to=functions.f",
    " to=python",
    " code",
    "json",
    " ",
    "{",
    '"a": 1}',
    "user",
    "functions.f",
    "to=",
    "\n",
    "€",
    "😀",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from(_STRUCTURAL).map(lambda i: [i]),
            st.integers(0, 201100).map(lambda i: [i]),
            st.sampled_from(_WORDS),
        ),
        max_size=60,
    ),
    role=st.sampled_from(["assistant", None]),
)
def test_fuzz_parser_never_raises_and_stays_consistent(small_tokenizer, pieces, role):
    ids = [i for piece in pieces for i in (small_tokenizer.encode(piece) if isinstance(piece, str) else piece)]
    parser = Parser(small_tokenizer, role)
    events = parser.feed_all(ids) + parser.finish()
    open_message = None
    text: list[str] = []
    for event in events:
        if isinstance(event, MessageStart):
            assert open_message is None
            open_message, text = event, []
        elif isinstance(event, TextDelta):
            assert open_message is not None and event.channel == open_message.channel
            text.append(event.text)
        elif isinstance(event, MessageEnd):
            assert open_message is not None and event.text == "".join(text)
            open_message = None
    assert open_message is None
    assert isinstance(events[-1], TurnEnd) or any(isinstance(e, TurnEnd) for e in events)
