"""Helpers shared by the harmony tests: where the real vocabulary is ($GPTOSS_SHARED_DATA), and ids from text
written with visible special tokens. The fixtures live in harmony_fixtures (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gptoss_cli.harmony import vocab
from gptoss_cli.harmony.tokenizer import Tokenizer

SHARED_DATA_ENV = "GPTOSS_SHARED_DATA"
TIKTOKEN_NAME = "o200k_base.tiktoken"


def tiktoken_file() -> Path | None:
    folder = os.environ.get(SHARED_DATA_ENV)
    if not folder:
        return None
    path = Path(folder) / TIKTOKEN_NAME
    return path if path.is_file() else None


def require_tiktoken_file() -> Path:
    path = tiktoken_file()
    if path is None:
        pytest.skip(f"needs the real o200k vocabulary: set {SHARED_DATA_ENV} to a folder holding {TIKTOKEN_NAME}")
    return path


def ids_from_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids for text written with visible special tokens: each "<|name|>" becomes its id, the rest is plain text
    encoded piece by piece (the way a model emits headers and content)."""
    specials = vocab.harmony_special_tokens()
    ids: list[int] = []
    for piece in re.split(r"(<\|[a-z_0-9]+\|>)", text):
        if piece in specials:
            ids.append(specials[piece])
        elif piece:
            ids += tokenizer.encode(piece)
    return ids
