"""Fixtures of the harmony tests (a pytest plugin: test modules say ``pytest_plugins = ("harmony_fixtures",)``).

``small_tokenizer`` is built here and needs nothing; ``real_tokenizer`` and ``harmony_encoding`` (the
openai-harmony oracle) need the vocabulary folder named by $GPTOSS_SHARED_DATA, and skip without it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from harmony_support import require_tiktoken_file

from gptoss_cli.harmony import vocab
from gptoss_cli.harmony.tokenizer import Tokenizer


def _cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("gptoss-harmony"))
    return tmp_path_factory.mktemp("gptoss-harmony")


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = vocab.build_small_tokenizer_json(tmp_path_factory.mktemp("small-tokenizer") / "tokenizer.json")
    return Tokenizer.from_file(path)


@pytest.fixture(scope="session")
def real_tokenizer_json(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json built from the shared o200k ranks, cached across runs (keyed by ranks + converter source)."""
    source = require_tiktoken_file()
    key = hashlib.sha256(source.read_bytes() + Path(vocab.__file__).read_bytes()).hexdigest()[:16]
    path = _cache_dir(request, tmp_path_factory) / f"o200k_harmony-{key}.json"
    if not path.is_file():
        partial = path.with_suffix(f".{os.getpid()}.partial")
        vocab.build_tokenizer_json(source, partial)
        os.replace(partial, path)
    return path


@pytest.fixture(scope="session")
def real_tokenizer(real_tokenizer_json: Path) -> Tokenizer:
    return Tokenizer.from_file(real_tokenizer_json)


@pytest.fixture(scope="session")
def harmony_encoding():
    """openai-harmony's HARMONY_GPT_OSS encoding, loaded offline from the shared vocabulary folder."""
    source = require_tiktoken_file()
    openai_harmony = pytest.importorskip("openai_harmony", reason="the oracle tests need openai-harmony (test extra)")
    previous = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(source.parent)
    try:
        return openai_harmony.load_harmony_encoding(openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_ENCODINGS_BASE"]
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = previous
