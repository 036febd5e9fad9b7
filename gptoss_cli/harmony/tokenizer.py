"""gpt-oss's tokenizer (``o200k_harmony``), loaded from the model directory's ``tokenizer.json``.

API:
    tok = Tokenizer.from_dir(model_dir)            # or Tokenizer.from_file(path_to_tokenizer_json)
    tok.encode("text")  -> list[int]               # plain text only: "<|start|>" typed by a user stays text
    tok.decode(ids)     -> str                     # special tokens spelled out ("<|end|>"), bad UTF-8 -> U+FFFD
    tok.token_bytes(i)  -> bytes                   # the raw bytes one id stands for
    dec = tok.stream_decoder(); dec.push(i) -> str; dec.flush() -> str
                                                   # only complete UTF-8 characters come out of push()

Special tokens are never produced by ``encode``: the renderer inserts them by id (constants below), so
nothing a user or a tool writes can forge a message boundary (spec harmony.md §1, pitfall 2).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from gptoss_cli.errors import GptossError
from gptoss_cli.harmony.vocab import byte_to_unicode, harmony_special_tokens

STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012

# <|end|>, <|return|> and <|call|> end a message; only <|return|> and <|call|> end sampling (registry.rs).
MESSAGE_END_IDS = frozenset({END, RETURN, CALL})
# Sampling stops here; <|endoftext|> is a safeguard the harmony format itself never uses.
SAMPLING_STOP_IDS = frozenset({RETURN, CALL, ENDOFTEXT})

_FORMAT_TOKENS = {
    "<|return|>": RETURN,
    "<|constrain|>": CONSTRAIN,
    "<|channel|>": CHANNEL,
    "<|start|>": START,
    "<|end|>": END,
    "<|message|>": MESSAGE,
    "<|call|>": CALL,
}
_REPLACEMENT = "\ufffd".encode()


class TokenizerError(GptossError):
    """tokenizer.json is missing, unreadable, or not gpt-oss's harmony tokenizer."""


class Tokenizer:
    """Text <-> ids for gpt-oss. Wraps a ``tokenizers.Tokenizer`` whose vocabulary is byte-level BPE."""

    def __init__(self, hf: HFTokenizer, source: str = "tokenizer.json") -> None:
        self._hf = hf
        self._hf.encode_special_tokens = True  # special-token text is encoded as plain text, never as a special
        for name, expected in _FORMAT_TOKENS.items():
            found = hf.token_to_id(name)
            if found != expected:
                raise TokenizerError(
                    f"{source} is not a harmony tokenizer: {name} has id {found}, expected {expected}",
                    hint="Use the tokenizer.json shipped with openai/gpt-oss-20b or gpt-oss-120b.",
                )
        self._special_ids = {i: name for name, i in harmony_special_tokens().items()}
        self._unicode_to_byte = {c: b for b, c in byte_to_unicode().items()}
        self._bytes: dict[int, bytes] = {}

    @classmethod
    def from_file(cls, path: Path | str) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"no tokenizer at {path}", hint="The model directory needs its tokenizer.json.")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception subclasses for bad JSON
            raise TokenizerError(f"cannot read {path}: {exc}", hint="Re-download the model (gptoss pull).") from exc
        return cls(hf, source=str(path))

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> Tokenizer:
        return cls.from_file(Path(model_dir) / "tokenizer.json")

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id; a special token gives its name, an id outside the vocabulary gives U+FFFD."""
        cached = self._bytes.get(token_id)
        if cached is None:
            cached = self._lookup_bytes(token_id)
            self._bytes[token_id] = cached
        return cached

    def _lookup_bytes(self, token_id: int) -> bytes:
        if token_id in self._special_ids:
            return self._special_ids[token_id].encode()
        piece = self._hf.id_to_token(token_id) if token_id >= 0 else None
        if piece is None:
            return _REPLACEMENT
        try:
            return bytes(self._unicode_to_byte[c] for c in piece)
        except KeyError:  # an added non-byte-level token: its text is its content
            return piece.encode()

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def special_name(self, token_id: int) -> str | None:
        return self._special_ids.get(token_id)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids, one at a time, into text that never splits a UTF-8 character.

    A character whose bytes span several tokens comes out whole once its last byte arrives; a byte sequence
    that can never become valid UTF-8 comes out as U+FFFD (stdlib incremental decoder, errors="replace").
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Text still held back (an unfinished character becomes U+FFFD); the decoder is then empty."""
        return self._utf8.decode(b"", final=True)


def visible_pieces(ids: Iterable[int], tokenizer: Tokenizer) -> list[tuple[str, bool]]:
    """Runs of ``(text, is_special)``: plain text decoded run by run, each special token as its name.

    A UI can style the special pieces, so a literal "<|start|>" typed as text never looks like the token.
    """
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    for token_id in ids:
        if tokenizer.is_special(token_id):
            if run:
                pieces.append((tokenizer.decode(run), False))
                run = []
            pieces.append((tokenizer.special_name(token_id) or "", True))
        else:
            run.append(token_id)
    if run:
        pieces.append((tokenizer.decode(run), False))
    return pieces


def format_tokens_visible(ids: Iterable[int], tokenizer: Tokenizer) -> str:
    """The prompt as text with special tokens spelled out (``<|start|>user<|message|>...``), for --print-prompt."""
    return "".join(text for text, _ in visible_pieces(ids, tokenizer))
