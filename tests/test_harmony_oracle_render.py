"""gptoss renders every corpus conversation to exactly the ids openai-harmony renders (real o200k vocabulary)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harmony_corpus import CASES, Case

from gptoss_cli.harmony.render import BROWSER_TOOL, PYTHON_TOOL, ChatOptions, ToolNamespace, render_prompt
from gptoss_cli.harmony.tokenizer import format_tokens_visible

pytest_plugins = ("harmony_fixtures",)


def _oracle_namespace(oh, ns: ToolNamespace):
    if ns is BROWSER_TOOL:
        return oh.ToolNamespaceConfig.browser()
    if ns is PYTHON_TOOL:
        return oh.ToolNamespaceConfig.python()
    tools = [oh.ToolDescription.new(t.name, t.description, t.parameters) for t in ns.tools]
    return oh.ToolNamespaceConfig(name=ns.name, description=ns.description, tools=tools)


def _oracle_message(oh, m: dict[str, Any]) -> list:
    """The documented dict shape, written directly against openai-harmony's Message API."""
    role = m["role"]
    if role == "tool":
        msg = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, m["name"]), m["content"])
        return [msg.with_recipient(m.get("recipient", "assistant")).with_channel(m.get("channel", "commentary"))]
    if role in ("system", "developer"):
        return [
            oh.Message.from_role_and_content(
                oh.Role.DEVELOPER, oh.DeveloperContent.new().with_instructions(m["content"])
            )
        ]
    author = oh.Author(role=oh.Role(role), name=m.get("name"))
    out = []
    if "content" in m:
        msg = oh.Message.from_author_and_content(author, m["content"])
        if role == "assistant":
            default = "commentary" if m.get("recipient") or m.get("tool_calls") else "final"
            msg = msg.with_channel(m.get("channel", default))
        if "recipient" in m:
            msg = msg.with_recipient(m["recipient"])
        if "content_type" in m:
            msg = msg.with_content_type(m["content_type"])
        out.append(msg)
    for call in m.get("tool_calls", ()):
        args = call["function"]["arguments"]
        text = args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))
        msg = oh.Message.from_role_and_content(oh.Role.ASSISTANT, text)
        out.append(
            msg.with_channel("commentary")
            .with_recipient("functions." + call["function"]["name"])
            .with_content_type("<|constrain|>json")
        )
    return out


def _oracle_conversation(case: Case, skip_dropped: bool):
    import openai_harmony as oh

    options: ChatOptions = case.options
    system = oh.SystemContent(
        model_identity=options.model_identity,
        reasoning_effort=oh.ReasoningEffort(options.reasoning_effort.capitalize()),
        conversation_start_date=options.current_date,
        knowledge_cutoff=options.knowledge_cutoff,
    )
    for ns in options.builtin_tools:
        system = system.with_tools(_oracle_namespace(oh, ns))
    messages = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    rest = list(enumerate(case.messages))
    instructions = [options.instructions] if options.instructions is not None else []
    while rest and rest[0][1]["role"] in ("system", "developer"):
        instructions.append(rest.pop(0)[1]["content"])
    if instructions or options.functions:
        developer = oh.DeveloperContent.new()
        if instructions:
            developer = developer.with_instructions("\n\n".join(instructions))
        if options.functions:
            developer = developer.with_function_tools(
                [oh.ToolDescription.new(t.name, t.description, t.parameters) for t in options.functions]
            )
        messages.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    for i, m in rest:
        if not (skip_dropped and i in case.dropped):
            messages += _oracle_message(oh, m)
    return oh.Conversation.from_messages(messages)


def _oracle_prompt(encoding, case: Case, auto_drop: bool) -> list[int]:
    import openai_harmony as oh

    conversation = _oracle_conversation(case, skip_dropped=not auto_drop)
    config = oh.RenderConversationConfig(auto_drop_analysis=auto_drop)
    return encoding.render_conversation_for_completion(conversation, oh.Role.ASSISTANT, config)


def test_corpus_covers_the_issue_list():
    assert len(CASES) >= 30
    efforts = {c.options.reasoning_effort for c in CASES}
    assert efforts == {"low", "medium", "high"}
    assert any(c.dropped for c in CASES) and any(not c.harmony_drops_same for c in CASES)
    assert any(BROWSER_TOOL in c.options.builtin_tools for c in CASES)
    assert any(PYTHON_TOOL in c.options.builtin_tools for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_render_matches_openai_harmony(case: Case, real_tokenizer, harmony_encoding):
    ours = render_prompt(case.messages, real_tokenizer, case.options)
    expected = _oracle_prompt(harmony_encoding, case, auto_drop=False)
    assert format_tokens_visible(ours, real_tokenizer) == harmony_encoding.decode(expected)
    assert ours == expected


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cot_dropping_agrees_with_openai_harmony_where_its_rule_does(case: Case, real_tokenizer, harmony_encoding):
    ours = render_prompt(case.messages, real_tokenizer, case.options)
    theirs = _oracle_prompt(harmony_encoding, case, auto_drop=True)
    assert (ours == theirs) == case.harmony_drops_same, case.notes


def test_builtin_tool_texts_equal_openai_harmony():
    oh = pytest.importorskip("openai_harmony", reason="the oracle tests need openai-harmony (test extra)")

    for ours, theirs in (
        (BROWSER_TOOL, oh.ToolNamespaceConfig.browser()),
        (PYTHON_TOOL, oh.ToolNamespaceConfig.python()),
    ):
        assert ours.name == theirs.name
        assert ours.description == theirs.description
        assert [(t.name, t.description, t.parameters) for t in ours.tools] == [
            (t.name, t.description, t.parameters) for t in theirs.tools
        ]
