"""Token-true history: generated ids kept verbatim, finished turns' CoT dropped, and how much KV prefix survives."""

from __future__ import annotations

import pytest
from harmony_corpus import CASES, DATE, WEATHER_TOOLS, Case
from harmony_support import ids_from_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_cli.harmony.conversation import Conversation, common_prefix
from gptoss_cli.harmony.render import ChatOptions, render_prompt
from gptoss_cli.harmony.tokenizer import CALL, END, RETURN, format_tokens_visible

# Cookbook "Handling tool calls": the next sampling input after a channel-first call and its result.
GOLDEN_COOKBOOK_TOOL_CALL = """<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06
Current date: 2025-06-28

Reasoning: high

# Valid channels: analysis, commentary, final. Channel must be included for every message.
Calls to these tools must go to the commentary channel: 'functions'.<|end|><|start|>developer<|message|># Instructions

Use a friendly tone.

# Tools

## functions

namespace functions {

// Gets the location of the user.
type get_location = () => any;

// Gets the current weather in the provided location.
type get_current_weather = (_: {
// The city and state, e.g. San Francisco, CA
location: string,
format?: "celsius" | "fahrenheit", // default: celsius
}) => any;

// Gets the current weather in the provided list of locations.
type get_multiple_weathers = (_: {
// List of city and state, e.g. ["San Francisco, CA", "New York, NY"]
locations: string[],
format?: "celsius" | "fahrenheit", // default: celsius
}) => any;

} // namespace functions<|end|><|start|>user<|message|>What is the weather like in SF?<|end|><|start|>assistant<|channel|>analysis<|message|>Need to use function get_weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"San Francisco"}<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"sunny": true, "temperature": 20}<|end|><|start|>assistant"""

pytest_plugins = ("harmony_fixtures",)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conversation_renders_dict_histories_like_render_prompt(case: Case, small_tokenizer):
    convo = Conversation(small_tokenizer, case.options, case.messages)
    assert convo.prompt_tokens() == render_prompt(case.messages, small_tokenizer, case.options)


def test_generated_call_is_kept_in_the_model_layout(small_tokenizer):
    tok = small_tokenizer
    options = ChatOptions(
        reasoning_effort="high", current_date=DATE, instructions="Use a friendly tone.", functions=WEATHER_TOOLS
    )
    convo = Conversation(tok, options, [{"role": "user", "content": "What is the weather like in SF?"}])
    prompt = convo.prompt_tokens()
    generated = ids_from_text(
        tok,
        "<|channel|>analysis<|message|>Need to use function get_weather.<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.get_weather <|constrain|>json<|message|>{"location":"San Francisco"}<|call|>',
    )
    convo.append_completion(generated)
    assert convo.tokens() == prompt + generated  # verbatim, nothing re-rendered
    convo.append({"role": "tool", "name": "functions.get_weather", "content": '{"sunny": true, "temperature": 20}'})
    new_prompt = convo.prompt_tokens()
    assert format_tokens_visible(new_prompt, tok) == GOLDEN_COOKBOOK_TOOL_CALL
    assert common_prefix(prompt + generated, new_prompt) == len(prompt + generated)  # a tool round only appends


def test_return_is_stored_as_end_and_only_the_unfed_stop_changes(small_tokenizer):
    tok = small_tokenizer
    convo = Conversation(tok, ChatOptions(), [{"role": "user", "content": "Hi"}])
    prompt = convo.prompt_tokens()
    generated = ids_from_text(tok, "<|channel|>final<|message|>Hello!<|return|>")
    convo.append_completion(generated)
    assert convo.tokens() == prompt + generated[:-1] + [END]
    assert RETURN not in convo.tokens()


def test_new_user_turn_drops_analysis_and_keeps_everything_before_that_turn(small_tokenizer):
    tok = small_tokenizer
    convo = Conversation(tok, ChatOptions(), [{"role": "user", "content": "2+2?"}])
    first_prompt = convo.prompt_tokens()
    convo.append_completion(
        ids_from_text(
            tok, "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
        )
    )
    engine_tokens = convo.tokens()  # what the engine has computed (the stop replaced, as it was never fed)
    convo.append({"role": "user", "content": "3+3?"})
    second_prompt = convo.prompt_tokens()
    text = format_tokens_visible(second_prompt, tok)
    assert "Easy." not in text
    assert text.endswith(
        "<|start|>user<|message|>2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|end|>"
        "<|start|>user<|message|>3+3?<|end|><|start|>assistant"
    )
    # The KV prefix survives up to the dropped analysis: everything before the finished turn's first message.
    kept = common_prefix(engine_tokens, second_prompt)
    assert len(first_prompt) <= kept < len(engine_tokens)

    convo.append_completion(
        ids_from_text(
            tok,
            "<|channel|>analysis<|message|>Also easy.<|end|><|start|>assistant<|channel|>final<|message|>6<|return|>",
        )
    )
    before_third = convo.tokens()
    convo.append({"role": "user", "content": "Bye"})
    third_prompt = convo.prompt_tokens()
    # Turn 1 lost its analysis long ago: nothing before turn 2's first generated message changes now.
    assert third_prompt[: len(second_prompt)] == second_prompt
    assert len(second_prompt) <= common_prefix(before_third, third_prompt) < len(before_third)


def test_tool_loop_keeps_analysis_until_the_next_user_message(small_tokenizer):
    tok = small_tokenizer
    convo = Conversation(tok, ChatOptions(), [{"role": "user", "content": "2**10?"}])
    convo.append_completion(
        ids_from_text(
            tok,
            "<|channel|>analysis<|message|>Use python.<|end|><|start|>assistant<|channel|>analysis to=python code<|message|>print(2**10)<|call|>",
        )
    )
    convo.append({"role": "tool", "name": "python", "channel": "analysis", "content": "1024"})
    convo.append_completion(
        ids_from_text(
            tok,
            "<|channel|>analysis<|message|>Got it.<|end|><|start|>assistant<|channel|>final<|message|>1024<|return|>",
        )
    )
    during = format_tokens_visible(convo.prompt_tokens(), tok)
    assert "Use python." in during and "Got it." in during
    convo.append({"role": "user", "content": "Thanks"})
    after = format_tokens_visible(convo.prompt_tokens(), tok)
    assert "Use python." not in after and "Got it." not in after
    assert "<|channel|>analysis to=python code<|message|>print(2**10)<|call|>" in after  # calls and results stay
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>1024<|end|>" in after


def test_stop_after_end_and_truncation_are_normalised(small_tokenizer):
    tok = small_tokenizer
    convo = Conversation(tok, ChatOptions(), [{"role": "user", "content": "Hi"}])
    prompt = convo.prompt_tokens()
    convo.append_completion(ids_from_text(tok, "<|channel|>final<|message|>Hi.<|end|><|return|>"))
    assert convo.tokens() == prompt + ids_from_text(tok, "<|channel|>final<|message|>Hi.<|end|>")
    convo.append({"role": "user", "content": "More"})
    prompt = convo.prompt_tokens()
    cut = ids_from_text(tok, "<|channel|>final<|message|>Once upon a")
    convo.append_completion(cut)
    assert convo.tokens() == prompt + cut + [END]
    before = convo.tokens()
    convo.append_completion([])
    assert convo.tokens() == before


def test_generated_entries_are_classified_by_their_headers(small_tokenizer):
    tok = small_tokenizer
    convo = Conversation(tok, ChatOptions(), [{"role": "user", "content": "q"}])
    convo.append_completion(
        ids_from_text(
            tok,
            "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>",
        )
    )
    headers = [(e.message.role, e.message.channel, e.message.recipient) for e in convo.entries]
    assert headers == [
        ("user", None, None),
        ("assistant", "analysis", None),
        ("assistant", "commentary", "functions.f"),
    ]
    assert convo.entries[-1].ids[-1] == CALL


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(st.sampled_from([200006, END, RETURN, CALL, 199999, 200003, 200005, 200008]), st.integers(0, 300)),
        max_size=50,
    )
)
def test_fuzz_appending_any_completion_only_appends(small_tokenizer, ids):
    convo = Conversation(small_tokenizer, ChatOptions(), [{"role": "user", "content": "x"}])
    before = convo.tokens()
    convo.append_completion(ids)
    after = convo.tokens()
    assert after[: len(before)] == before
    assert RETURN not in after[len(before) :]
    assert all(entry.ids[-1] in (END, CALL) for entry in convo.entries[1:])
