"""The parser, fed token by token, yields the same messages and text deltas as openai-harmony's StreamableParser
on model-style outputs (real o200k vocabulary)."""

from __future__ import annotations

import pytest
from harmony_support import ids_from_text

from gptoss_cli.harmony.parser import MessageEnd, Parser, TextDelta

OUTPUTS = {
    "reasoning_then_final": '<|channel|>analysis<|message|>User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.'
    "<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>",
    "return_mid_stream_then_unfinished": '<|channel|>analysis<|message|>User asks: "What is 2 + 2?" Simple arithmetic.'
    "<|return|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4.",
    "function_call_channel_first": "<|channel|>analysis<|message|>Need to use function get_weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"location":"San Francisco"}<|call|>',
    "function_call_recipient_first": ' to=functions.lookup_weather<|channel|>analysis json<|message|>{"location": "Tokyo"}<|call|>',
    "constrain_without_space": '<|channel|>commentary to=functions.f<|constrain|>json<|message|>{"x": [1, 2, {"y": null}]}<|call|>',
    "python_multiline_code": "<|channel|>analysis<|message|>Let me compute.<|end|><|start|>assistant<|channel|>analysis to=python code"
    "<|message|>import math\n\ndef f(n):\n    return math.factorial(n)\n\nprint(f(20))\n<|call|>",
    "browser_search": "<|channel|>analysis<|message|>It's 2025, presumably current president is Joe Biden? But w\n"
    "e need up to date info. Let's browse to confirm.<|end|><|start|>assistant<|channel|>commentary to=browser.search code"
    '<|message|>{"query": "current US president July 2025", "topn": 10, "source": "news"}<|call|>',
    "preamble_then_call": "<|channel|>analysis<|message|>Plan.<|end|><|start|>assistant<|channel|>commentary<|message|>"
    "**Action plan**: 1. look up 2. answer<|end|><|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json"
    '<|message|>{"q": "Kyïv — 天气 ☀️"}<|call|>',
    "unicode_final": "<|channel|>analysis<|message|>用户问候。😀👩‍👩‍👧 Ünïcødé.<|end|><|start|>assistant<|channel|>final"
    "<|message|>你好！ 🎉\n\n| a | b |\n|---|---|\n| ✓ | ✗ |\n\n```python\nprint('hi')\n```<|return|>",
    "structured_final": '<|channel|>final <|constrain|>json<|message|>{"items": ["apple", "pear"]}<|return|>',
}

pytest_plugins = ("harmony_fixtures",)


def _harmony_run(encoding, ids: list[int]):
    import openai_harmony as oh

    parser = oh.StreamableParser(encoding, oh.Role.ASSISTANT)
    deltas = []
    for token_id in ids:
        parser.process(token_id)
        deltas.append(parser.last_content_delta or "")
    parser.process_eos()
    messages = [
        (m.author.role.value, m.author.name, m.channel, m.recipient, m.content_type, "".join(c.text for c in m.content))
        for m in parser.messages
    ]
    return messages, deltas


def _our_run(tokenizer, ids: list[int]):
    parser = Parser(tokenizer)
    deltas, ends = [], []
    for token_id in ids:
        events = parser.feed(token_id)
        deltas.append("".join(e.text for e in events if isinstance(e, TextDelta)))
        ends += [e for e in events if isinstance(e, MessageEnd)]
    ends += [e for e in parser.finish() if isinstance(e, MessageEnd)]
    messages = [(m.role, m.name, m.channel, m.recipient, m.content_type, m.text) for m in ends]
    return messages, deltas


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_parser_matches_streamable_parser(name, real_tokenizer, harmony_encoding):
    ids = ids_from_text(real_tokenizer, OUTPUTS[name])
    ours = _our_run(real_tokenizer, ids)
    theirs = _harmony_run(harmony_encoding, ids)
    if name == "structured_final":  # openai-harmony reads "<|constrain|>json" after final as a recipient (pitfall 9)
        assert theirs[0][0][3:5] == ("<|constrain|>json", None)
        assert ours[0][0][3:5] == (None, "<|constrain|>json")
        return
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]


def test_parser_splits_multibyte_characters_like_streamable_parser(real_tokenizer, harmony_encoding):
    text = "<|channel|>final<|message|>" + "".join(chr(c) for c in range(0x1F600, 0x1F640)) + "ঁংঃঅআ𝔘𝔫𝔦<|return|>"
    ids = ids_from_text(real_tokenizer, text)
    assert len(ids) > 20
    assert _our_run(real_tokenizer, ids) == _harmony_run(harmony_encoding, ids)
