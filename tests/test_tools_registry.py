"""The registry: every call the model makes gets an answer; nothing runs unless the user approves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from gptoss_cli.tools.approval import DENIED, Approval, render_call
from gptoss_cli.tools.call import ToolCall, ToolResult, clip
from gptoss_cli.tools.functions import function_tool, tools_from_openai
from gptoss_cli.tools.python import PythonLimits, PythonTool
from gptoss_cli.tools.registry import ToolRegistry

CALLED: list[str] = []


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Current weather in a city."""
    CALLED.append(city)
    return {"city": city, "temperature": 21, "unit": unit}


def now() -> str:
    """The time."""
    return "12:00"


def broken(x: int) -> int:
    """Raises."""
    raise KeyError(x)


def chatty() -> str:
    """Long answer."""
    return "word " * 1000


class Asker:
    """A stand-in for the REPL's question: answers from a script, records what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[ToolCall] = []

    def __call__(self, call: ToolCall) -> str:
        self.asked.append(call)
        return self.answers.pop(0)


@pytest.fixture(scope="module")
def python():
    with PythonTool(PythonLimits(timeout_s=10)) as tool:
        yield tool


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLED.clear()


def make(python=None, approval=None, **kwargs) -> ToolRegistry:
    functions = [function_tool(f) for f in (get_weather, now, broken, chatty)]
    functions += tools_from_openai([{"type": "function", "function": {"name": "remote", "description": "Caller's."}}])
    return ToolRegistry(python=python, functions=functions, approval=approval, **kwargs)


def test_nothing_runs_without_approval(python, tmp_path: Path):
    marker = tmp_path / "ran"
    registry = make(python)  # no ask callback and no --yes: everything is denied
    result = registry.dispatch("python", f"open({str(marker)!r}, 'w').write('x')", "analysis")
    assert result == ToolResult("python", DENIED, "denied", "analysis")
    assert not marker.exists()
    assert registry.dispatch("functions.get_weather", '{"city": "Oslo"}').status == "denied"
    assert CALLED == []


def test_a_denied_call_is_reported_and_not_run(python, tmp_path: Path):
    marker = tmp_path / "ran"
    ask = Asker("deny", "maybe")
    registry = make(python, Approval(ask))
    code = f"open({str(marker)!r}, 'w').write('x')"
    assert registry.dispatch("python", code, "analysis").content == "The user denied this tool call."
    assert registry.dispatch("functions.get_weather", '{"city": "Oslo"}').status == "denied"  # an odd answer denies
    assert not marker.exists() and CALLED == []
    assert [(c.tool, c.kind, c.text) for c in ask.asked] == [
        ("python", "python", code),
        ("functions.get_weather", "function", '{"city": "Oslo"}'),
    ]
    assert ask.asked[1].arguments == {"city": "Oslo"}


def test_once_asks_every_time_and_always_covers_only_that_tool(python):
    ask = Asker("once", "once", "always", "once")
    registry = make(python, Approval(ask))
    registry.dispatch("functions.get_weather", '{"city": "A"}')
    registry.dispatch("functions.get_weather", '{"city": "B"}')
    registry.dispatch("python", "1")
    registry.dispatch("python", "2")  # approved for the session: not asked
    registry.dispatch("functions.now", "{}")  # another tool: asked
    assert [c.tool for c in ask.asked] == ["functions.get_weather"] * 2 + ["python", "functions.now"]
    assert registry.approval.always_allowed == {"python"}
    assert CALLED == ["A", "B"]


def test_yes_approves_everything_without_asking(python):
    registry = make(python, Approval(Asker(), yes=True))
    assert registry.dispatch("python", "print(2**100)", "analysis") == ToolResult(
        "python", "1267650600228229401496703205376\n", "ok", "analysis"
    )
    result = registry.dispatch("functions.get_weather", '{"city": "Oslo"}', "commentary")
    assert result == ToolResult(
        "functions.get_weather", '{"city": "Oslo", "temperature": 21, "unit": "celsius"}', "ok", "commentary"
    )


def test_results_become_harmony_tool_messages(python):
    registry = make(python, Approval(yes=True))
    assert registry.dispatch("python", "1 + 1", "analysis").as_message() == {
        "role": "tool",
        "name": "python",
        "channel": "analysis",
        "content": "2\n",
    }
    assert registry.dispatch("functions.now", "").as_message() == {
        "role": "tool",
        "name": "functions.now",
        "content": "12:00",
    }


@pytest.mark.parametrize(
    ("recipient", "text", "status", "says"),
    [
        (
            "functions.nope",
            "{}",
            "unknown",
            "unknown tool 'functions.nope'; available tools: python, functions.get_weather",
        ),
        ("browser.search", '{"query": "x"}', "unknown", "unknown tool 'browser.search'"),
        ("functions.get_weather", '{"city": "Oslo"', "invalid", "the arguments are not valid JSON"),
        ("functions.get_weather", '"Oslo"', "invalid", "must be a JSON object, not str"),
        ("functions.get_weather", '{"town": "Oslo"}', "invalid", "unexpected argument(s) town"),
        ("functions.get_weather", "{}", "invalid", "missing required argument(s) city"),
    ],
)
def test_unknown_tools_and_bad_arguments_are_answered_without_asking(python, recipient, text, status, says):
    registry = make(python, Approval(Asker()))  # Asker() with no answers fails if it is asked
    result = registry.dispatch(recipient, text, "commentary")
    assert result.status == status and result.is_error
    assert result.content.startswith("Error: ") and says in result.content
    assert result.channel == "commentary"
    assert CALLED == []


def test_python_is_unknown_when_disabled():
    registry = make(None, Approval(yes=True))
    assert registry.builtin_tool_names() == ()
    result = registry.dispatch("python", "1")
    assert result.status == "unknown" and "available tools: functions.get_weather" in result.content


@pytest.mark.parametrize(
    "recipient",
    [
        "functions.get_weather",
        "get_weather",
        " functions.get_weather ",
        "functions.get_weatherjson",
        "functions.get_weather<|constrain|>json",
        "get_weather json",
    ],
)
def test_recipient_forms_the_model_writes(recipient):
    registry = make()
    call = registry.resolve(recipient, '{"city": "Oslo"}', "analysis")
    assert (call.tool, call.kind, call.arguments, call.error) == (
        "functions.get_weather",
        "function",
        {"city": "Oslo"},
        None,
    )
    assert registry.has_tool(recipient)


def test_python_recipients_and_wrapped_code(python):
    registry = make(python, Approval(yes=True))
    assert registry.resolve("python.exec", "1").kind == "python"
    assert registry.dispatch("python", '{"code": "6 * 7"}').content == "42\n"
    assert registry.dispatch("python", "{1, 2}").content == "{1, 2}\n"  # a set, not JSON: run as it is


def test_argument_leniency():
    registry = make(approval=Approval(yes=True))
    assert registry.dispatch("functions.now", "").content == "12:00"  # no arguments at all
    assert registry.dispatch("functions.get_weather", '[{"city": "Rome"}]').status == "ok"  # wrapped in [...]
    assert CALLED == ["Rome"]


def test_errors_inside_tools_come_back_as_error_results(python):
    registry = make(python, Approval(yes=True))
    assert registry.dispatch("functions.broken", '{"x": 3}') == ToolResult(
        "functions.broken", "Error: KeyError: 3", "error"
    )
    failed = registry.dispatch("python", "1/0")
    assert failed.status == "error" and "ZeroDivisionError" in failed.content


def test_function_results_are_cut_to_the_cap():
    registry = make(approval=Approval(yes=True), max_result_chars=300)
    content = registry.dispatch("functions.chatty", "{}").content
    assert len(content) < 360 and "[... output truncated: 4,700 characters omitted ...]" in content


def test_caller_run_tools_are_resolved_but_never_run_here():
    ask = Asker()
    registry = make(approval=Approval(ask))
    call = registry.resolve("functions.remote", '{"q": 1}', "commentary")
    assert (call.kind, call.tool, call.arguments) == ("external", "functions.remote", {"q": 1})
    assert registry.execute(call).status == "external"
    assert ask.asked == []


def test_what_the_renderer_and_tools_listing_see(python):
    registry = make(python)
    assert registry.builtin_tool_names() == ("python",)
    specs = registry.function_specs()
    assert specs[0] == {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "default": "celsius"}},
            "required": ["city"],
        },
    }
    assert specs[1] == {"name": "now", "description": "The time."}
    listing = registry.listing()
    assert [t.name for t in listing] == ["python"] + [
        f"functions.{n}" for n in ("get_weather", "now", "broken", "chatty", "remote")
    ]
    assert [t.runs_locally for t in listing][-1] is False


def test_render_call_shows_code_and_pretty_arguments():
    registry = make()

    def shown(call: ToolCall) -> str:
        console = Console(record=True, width=60, color_system=None)
        console.print(render_call(call))
        return console.export_text()

    code = shown(ToolCall("python", "python", "python", "for i in range(3):\n    print(i)"))
    assert "python" in code.splitlines()[0] and "    print(i)" in code
    arguments = shown(registry.resolve("get_weather", '{"city":"Oslo","unit":"fahrenheit"}'))
    assert "functions.get_weather" in arguments.splitlines()[0]
    assert '"city": "Oslo",' in arguments and '"unit": "fahrenheit"' in arguments


def test_clip_keeps_both_ends_and_counts_what_is_gone():
    assert clip("short", 10) == "short"
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    cut = clip(text, 90)
    head, marker, tail = cut.split("\n")
    assert head == text[:60] and tail == text[-30:]
    assert marker == "[... output truncated: 910 characters omitted ...]"
    # Two sides of a gap already cut out: the gap is counted, an unused head share goes to the tail.
    assert clip("top", 90, tail="x" * 200, omitted=5000) == (
        "top\n[... output truncated: 5,113 characters omitted ...]\n" + "x" * 87
    )
