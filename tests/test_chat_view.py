"""The chat's look: reasoning apart from the answer, Markdown once complete, plain text off a terminal, NO_COLOR."""

from __future__ import annotations

import io
import re

from chat_support import FakeTools, ids, strip_ansi
from rich.console import Console

from gptoss_cli.chat.session import RoundStats, Session, TurnResult
from gptoss_cli.chat.view import ChatView, _Tail, stats_line
from gptoss_cli.engine.scripted import ScriptedEngine
from gptoss_cli.harmony import ChatOptions

pytest_plugins = ("chat_fixtures",)

REPLY = ("<|channel|>analysis<|message|>They want a list.<|end|>"
         "<|start|>assistant<|channel|>final<|message|># Title\n\nSome **bold** text.\n\n- a\n- b<|return|>")
COLOR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|38;[25];[0-9;]+|9[0-7])m")


def console(terminal: bool, **kwargs) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=80, height=24, **kwargs), buffer


def draw(tok, view: ChatView, *responses: str, tools=None) -> Session:
    session = Session(ScriptedEngine([ids(tok, r) for r in responses]), tok, ChatOptions(), tools=tools)
    view.render(session.send("Make a list"))
    return session


def test_off_a_terminal_everything_is_plain_text_written_once(chat_tokenizer):
    con, buffer = console(terminal=False)
    draw(chat_tokenizer, ChatView(con), REPLY)
    assert buffer.getvalue() == "Thinking: They want a list.\n# Title\n\nSome **bold** text.\n\n- a\n- b\n"


def test_on_a_terminal_the_answer_is_rendered_as_markdown_and_reasoning_dimmed(chat_tokenizer):
    con, buffer = console(terminal=True)
    draw(chat_tokenizer, ChatView(con), REPLY)
    raw = buffer.getvalue()
    assert "\x1b[2;3mT" in raw and "They want a list." in strip_ansi(raw)  # dim italic, streamed
    # The answer streamed as plain text in a live region, which was then erased and replaced by its rendering.
    streamed, rendered = raw.rsplit("\x1b[2K", 1)
    assert raw.index("\x1b[?7l") < raw.index("Some **bold**") < raw.index("\x1b[?7h")  # no wrapping while live
    assert "Some **bold** text." in strip_ansi(streamed)
    assert "**" not in rendered and "\x1b[1mbold\x1b[0m" in rendered and "• a" in strip_ansi(rendered)


def test_hidden_reasoning_folds_to_one_line(chat_tokenizer):
    con, buffer = console(terminal=False)
    draw(chat_tokenizer, ChatView(con, show_reasoning=False), REPLY)
    lines = buffer.getvalue().splitlines()
    assert re.fullmatch(r"Thought for [\d.]+ s \(4 words\) · /reasoning show to see it", lines[0])
    assert "They want" not in buffer.getvalue()


def test_tool_calls_and_results_are_shown(chat_tokenizer):
    con, buffer = console(terminal=False)
    call = "<|channel|>analysis to=python<|message|>for i in range(20):\n    print(i)<|call|>"
    tools = FakeTools(python=lambda code: "\n".join(str(i) for i in range(20)))
    draw(chat_tokenizer, ChatView(con), call, "<|channel|>final<|message|>Done.<|return|>", tools=tools)
    text = buffer.getvalue()
    assert "Tool call: python" in text and "for i in range(20):" in text
    assert "python output:" in text and "… 12 more lines" in text and "Done." in text


def test_no_color_keeps_styles_but_drops_colours(chat_tokenizer, monkeypatch):
    call = "<|channel|>analysis to=python<|message|>print(1)<|call|>"
    tools = FakeTools(python=lambda code: "1")
    coloured, buffer = console(terminal=True)
    draw(chat_tokenizer, ChatView(coloured), call, REPLY, tools=tools)
    assert COLOR.search(buffer.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    plain, buffer = console(terminal=True)
    draw(chat_tokenizer, ChatView(plain), call, REPLY, tools=tools)
    assert not COLOR.search(buffer.getvalue())
    assert "\x1b[1m" in buffer.getvalue()  # bold is not a colour


def test_the_live_answer_never_grows_past_the_screen():
    con, _ = console(terminal=True)
    tail = _Tail()
    tail.text = "\n".join(f"line {i}" for i in range(100))
    lines = con.render_lines(tail, con.options, pad=False)
    assert len(lines) == 24 - 2
    assert "".join(s.text for s in lines[-1]) == "line 99"


def test_stats_line_says_what_a_user_checks():
    turn = TurnResult(rounds=[RoundStats(prompt_tokens=1234, reused_tokens=1100, ttft_seconds=0.123,
                                         generated_tokens=63, decode_seconds=1.5, finish_reason="stop")],
                      finish_reason="stop")
    assert stats_line(turn, 1300, 8192) == ("63 tokens · 41.3 tok/s · TTFT 0.12 s · prompt 1,234 (1,100 cached) · "
                                            "context 1,300 / 8,192 (16%)")
    turn.finish_reason = "context"
    assert stats_line(turn, 8192, 8192).endswith("context 8,192 / 8,192 (100%) · context full")
