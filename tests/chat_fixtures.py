"""Fixtures of the chat tests (a pytest plugin: test modules say ``pytest_plugins = ("chat_fixtures",)``).

``chat_tokenizer`` is the small self-built harmony tokenizer; ``tiny_chat_model`` a random-weight checkpoint with
the full vocabulary (harmony ids fit) and that tokenizer, for end-to-end runs of the real engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gptoss_cli.harmony.tokenizer import Tokenizer
from gptoss_cli.harmony.vocab import build_small_tokenizer_json


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_file(build_small_tokenizer_json(tmp_path_factory.mktemp("chat-tok") / "tokenizer.json"))


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptoss_cli.model.random_weights import tiny_config_dict, write_checkpoint

    out = write_checkpoint(tmp_path_factory.mktemp("tiny-chat") / "tiny-chat", tiny_config_dict(vocab_size=201088))
    build_small_tokenizer_json(out / "tokenizer.json")
    return out
