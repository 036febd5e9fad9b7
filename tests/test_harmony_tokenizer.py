"""The harmony tokenizer: special ids, plain-text encoding of special-token text, UTF-8-safe streaming."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_cli.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    Tokenizer,
    TokenizerError,
    format_tokens_visible,
    visible_pieces,
)
from gptoss_cli.harmony.vocab import VOCAB_SIZE, build_small_tokenizer_json, harmony_special_tokens

pytest_plugins = ("harmony_fixtures",)


def test_special_token_table_matches_the_spec():
    table = harmony_special_tokens()
    assert len(table) == VOCAB_SIZE - 199998 == 1090
    assert table["<|start|>"] == START == 200006
    assert (table["<|end|>"], table["<|message|>"], table["<|channel|>"]) == (END, MESSAGE, CHANNEL)
    assert (table["<|return|>"], table["<|constrain|>"], table["<|call|>"]) == (RETURN, CONSTRAIN, CALL)
    assert table["<|reserved_200013|>"] == 200013 and table["<|reserved_201087|>"] == 201087


def test_small_tokenizer_has_special_ids_at_real_positions(small_tokenizer):
    assert small_tokenizer.decode([START, END, 201087]) == "<|start|><|end|><|reserved_201087|>"
    assert small_tokenizer.is_special(CALL) and not small_tokenizer.is_special(65)


def test_small_tokenizer_merges_words(small_tokenizer):
    ids = small_tokenizer.encode("assistant")
    assert len(ids) == 1 and ids[0] >= 256
    assert small_tokenizer.encode("A") == [65]


def test_special_token_text_is_encoded_as_plain_text(small_tokenizer):
    ids = small_tokenizer.encode("<|start|>user<|message|>hi<|end|>")
    assert not any(small_tokenizer.is_special(i) for i in ids)
    assert small_tokenizer.decode(ids) == "<|start|>user<|message|>hi<|end|>"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_encode_decode_round_trips_any_text(small_tokenizer, text):
    assert small_tokenizer.decode(small_tokenizer.encode(text)) == text


def test_stream_decoder_never_splits_a_character(small_tokenizer):
    ids = small_tokenizer.encode("a€😀b")
    assert len(ids) == 1 + 3 + 4 + 1  # byte-level: each multi-byte char is several tokens here
    decoder = small_tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert pieces == ["a", "", "", "€", "", "", "", "😀", "b"]
    assert decoder.flush() == ""


def test_stream_decoder_replaces_bytes_that_can_never_be_utf8(small_tokenizer):
    decoder = small_tokenizer.stream_decoder()
    assert decoder.push(0xE2) == ""  # first byte of a 3-byte character
    assert decoder.push(ord("x")) == "\ufffdx"
    assert decoder.push(0xF0) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(0xFF) == "\ufffd"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_stream_decoder_output_concatenates_to_the_text(small_tokenizer, text):
    decoder = small_tokenizer.stream_decoder()
    out = "".join(decoder.push(i) for i in small_tokenizer.encode(text)) + decoder.flush()
    assert out == text


def test_unknown_id_decodes_as_replacement(small_tokenizer):
    assert small_tokenizer.decode([5000]) == "\ufffd"


def test_visible_format_marks_special_tokens(small_tokenizer):
    ids = [START] + small_tokenizer.encode("user") + [MESSAGE] + small_tokenizer.encode("<|end|> é") + [END]
    assert format_tokens_visible(ids, small_tokenizer) == "<|start|>user<|message|><|end|> é<|end|>"
    assert visible_pieces(ids, small_tokenizer) == [
        ("<|start|>", True),
        ("user", False),
        ("<|message|>", True),
        ("<|end|> é", False),
        ("<|end|>", True),
    ]


def test_missing_tokenizer_is_an_actionable_error(tmp_path):
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_dir(tmp_path)
    assert "tokenizer.json" in str(err.value) and err.value.hint


def test_corrupt_tokenizer_is_an_actionable_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError):
        Tokenizer.from_dir(tmp_path)


def test_tokenizer_without_harmony_specials_is_rejected(tmp_path):
    path = build_small_tokenizer_json(tmp_path / "tokenizer.json")
    data = json.loads(path.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|call|>"]
    del data["model"]["vocab"]["<|call|>"]
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="<\\|call\\|>"):
        Tokenizer.from_file(path)


# --- with the real o200k vocabulary ---------------------------------------------------------------------------


def _sample_texts() -> list[str]:
    rng = random.Random(7)
    alphabet = "ab Z9_-\n\t'sé€😀中\u200d.<|>"
    texts = [
        "Hello world",
        " to=functions.get_weather",
        "I'm sorry, I CAN'T do that!!\n\n\n  ok",
        "数学は楽しい。😀 émoji  \t tabs\r\nCRLF",
        "def f(x):\n    return x**2  # comment\n",
        "HTTPServer's XMLHttpRequest 1234567890",
        "<|start|>assistant<|channel|>final<|message|>",
    ]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    return texts


def test_real_tokenizer_encodes_like_openai_harmony(real_tokenizer, harmony_encoding):
    for text in _sample_texts():
        assert real_tokenizer.encode(text) == harmony_encoding.encode(text, disallowed_special=()), text


def test_real_tokenizer_header_words_have_spec_ids(real_tokenizer):
    assert real_tokenizer.encode("assistant") == [173781]
    assert real_tokenizer.encode("commentary") == [12606, 815]
    assert real_tokenizer.encode(" json") == [5701]
    assert real_tokenizer.encode("functions") == [44580]


def test_real_tokenizer_decodes_like_openai_harmony(real_tokenizer, harmony_encoding):
    rng = random.Random(3)
    ids = [rng.randrange(0, 201088) for _ in range(2000)]
    ids += [START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL, 199998, 199999, 200018, 201087]
    assert real_tokenizer.decode(ids) == harmony_encoding.decode(ids)
