"""The tool loop end to end: a scripted engine replays real harmony tool-call token streams (real o200k vocabulary)
through approval, execution and the continued generation, and the history is checked against openai-harmony.

What must hold token for token: every message gptoss renders itself (system, developer with the function tools,
user, each tool result) equals openai-harmony's rendering; every generated message stays exactly the model's ids
(calls keep their channel-first layout, <|return|> is stored as <|end|>); the prompt of each continued generation
is that history plus ``<|start|>assistant``; and openai-harmony parses each generated call to the same recipient,
channel and arguments that were executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harmony_support import ids_from_text

from gptoss_cli.chat.session import Session
from gptoss_cli.chat.tooling import RegistryTools
from gptoss_cli.engine.scripted import ScriptedEngine
from gptoss_cli.harmony import PYTHON_TOOL, ChatOptions
from gptoss_cli.tools.approval import Approval
from gptoss_cli.tools.functions import load_functions_file
from gptoss_cli.tools.python import PythonLimits, PythonTool
from gptoss_cli.tools.registry import ToolRegistry

pytest_plugins = ("harmony_fixtures",)

FUNCTIONS = '''
def get_weather(city: str, unit: str = "celsius") -> dict:
    """Current weather in a city.

    Args:
        city: City name, e.g. "Paris".
        unit: celsius or fahrenheit.
    """
    return {"city": city, "sky": "sunny", "temperature": 21, "unit": unit}
'''

CASES = {
    "function call, channel first, constrain json": (
        "<|channel|>analysis<|message|>User wants weather. Call the tool.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Paris"}<|call|>',
        "functions.get_weather", "commentary", "sunny"),
    "function call, recipient before channel": (
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
        '{"city": "Oslo", "unit": "fahrenheit"}<|call|>',
        "functions.get_weather", "commentary", "fahrenheit"),
    "function call on the analysis channel": (
        "<|channel|>analysis to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Rome"}<|call|>',
        "functions.get_weather", "analysis", "Rome"),
    "python call with multi-line code": (
        "<|channel|>analysis<|message|>Let me compute it.<|end|>"
        "<|start|>assistant<|channel|>analysis to=python code<|message|>"
        "x = 17 * 23\nfor i in range(2):\n    x += 1\nprint(x)<|call|>",
        "python", "analysis", "393"),
}
FINAL = "<|channel|>analysis<|message|>Got it.<|end|><|start|>assistant<|channel|>final<|message|>Done: see above.<|return|>"


def oracle_prefix(oh, encoding, options: ChatOptions, user: str) -> list[int]:
    system = oh.SystemContent(
        model_identity=options.model_identity,
        reasoning_effort=oh.ReasoningEffort(options.reasoning_effort.capitalize()),
        conversation_start_date=options.current_date,
        knowledge_cutoff=options.knowledge_cutoff,
    ).with_tools(oh.ToolNamespaceConfig.python())
    developer = oh.DeveloperContent.new().with_function_tools(
        [oh.ToolDescription.new(t.name, t.description, t.parameters) for t in options.functions])
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
                oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
                oh.Message.from_role_and_content(oh.Role.USER, user)]
    return encoding.render_conversation(oh.Conversation.from_messages(messages))


@pytest.mark.parametrize("case", list(CASES))
def test_tool_loop_history_matches_openai_harmony(case: str, real_tokenizer, harmony_encoding,
                                                  tmp_path: Path) -> None:
    import openai_harmony as oh

    generated, recipient, channel, expect_in_output = CASES[case]
    tools_file = tmp_path / "my_tools.py"
    tools_file.write_text(FUNCTIONS)
    asked: list[str] = []

    def ask(call) -> str:
        asked.append(call.name if hasattr(call, "name") else str(call))
        return "once"

    python = PythonTool(PythonLimits(timeout_s=20, memory_bytes=1 << 30, output_chars=2000))
    registry = ToolRegistry(python=python, functions=load_functions_file(tools_file), approval=Approval(ask))
    first, final = ids_from_text(real_tokenizer, generated), ids_from_text(real_tokenizer, FINAL)
    engine = ScriptedEngine(responses=[first, final])
    options = ChatOptions(current_date="2026-11-28")
    session = Session(engine, real_tokenizer, options, tools=RegistryTools(registry))
    try:
        list(session.send("What is the weather in Paris?"))
    finally:
        registry.close()

    result = session.last
    assert len(asked) == 1, "the call went through approval exactly once"
    assert len(result.tool_calls) == 1
    record = result.tool_calls[0]
    assert (record.recipient, record.channel, record.status) == (recipient, channel, "ok")
    assert expect_in_output in record.output and result.final == "Done: see above."

    # openai-harmony parses the generated call (without its stop token) the same way
    parsed = harmony_encoding.parse_messages_from_completion_tokens(first[:-1], oh.Role.ASSISTANT)[-1]
    assert parsed.recipient == recipient and parsed.channel == channel
    assert parsed.content[0].text == record.raw
    if recipient.startswith("functions."):
        assert json.loads(parsed.content[0].text) == record.arguments

    # the history, token for token
    prefix = oracle_prefix(oh, harmony_encoding, session.options, "What is the weather in Paris?")
    author = oh.Author.new(oh.Role.TOOL, recipient)
    tool_message = oh.Message.from_author_and_content(author, record.output).with_recipient("assistant") \
        .with_channel(channel)
    tool_ids = harmony_encoding.render(tool_message)
    start_assistant = [200006, 173781]
    stored_final = final[:-1] + [200007]  # <|return|> is kept as <|end|>
    assert session.tokens() == prefix + start_assistant + first + tool_ids + start_assistant + stored_final
    # each generation saw exactly the history so far plus <|start|>assistant
    assert engine.prompts[0] == prefix + start_assistant
    assert engine.prompts[1] == prefix + start_assistant + first + tool_ids + start_assistant
    # the continued generation reused the whole first round (the scripted engine counts like the real one)
    assert engine.stats.reused_tokens == len(engine.prompts[0]) + len(first) - 1


def test_python_tool_config_is_the_one_harmony_knows(harmony_encoding) -> None:
    import openai_harmony as oh

    assert PYTHON_TOOL.description == oh.ToolNamespaceConfig.python().description
