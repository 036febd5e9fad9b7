"""Build Hugging Face ``tokenizer.json`` files for gpt-oss's ``o200k_harmony`` encoding.

The hub repos ship a ``tokenizer.json``; gptoss reads that one. These builders exist for places that have no
hub download: tests, tiny random checkpoints, offline development.

- ``build_tokenizer_json(tiktoken_file, out_path)`` converts OpenAI's ``o200k_base.tiktoken`` ranks into the real
  gpt-oss tokenizer: the o200k split regex, byte-level BPE whose merges are derived from the ranks (the standard
  tiktoken -> HF conversion), and harmony's special tokens at ids 199998..201087. A few seconds.
- ``build_small_tokenizer_json(out_path)`` builds a self-contained stand-in: the same split regex and byte-level
  alphabet (bytes 0..255 at ids 0..255), a few dozen merges, and every harmony special token at its real id.
  Ids between the merges and 199998 are simply unused: ``tokenizers`` accepts a sparse vocabulary, so special
  ids match the real model (embedding size 201088) while the file stays tiny.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

# The split regex of o200k_base (tiktoken_ext/openai_public.py), shared by o200k_harmony.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

FIRST_SPECIAL_ID = 199998
VOCAB_SIZE = 201088  # the model's embedding rows; ids 199998..201087 are special


def harmony_special_tokens() -> dict[str, int]:
    """Name -> id of every special token of o200k_harmony that fits the model's 201088-row embedding."""
    named = {
        199998: "<|startoftext|>",
        199999: "<|endoftext|>",
        200002: "<|return|>",
        200003: "<|constrain|>",
        200005: "<|channel|>",
        200006: "<|start|>",
        200007: "<|end|>",
        200008: "<|message|>",
        200012: "<|call|>",
    }
    return {named.get(i, f"<|reserved_{i}|>"): i for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)}


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _as_text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _assemble(vocab: dict[str, int], merges: list[tuple[str, str]], out_path: Path) -> Path:
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(harmony_special_tokens().items(), key=lambda item: item[1])
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    return out_path


def read_tiktoken_ranks(tiktoken_file: Path) -> dict[bytes, int]:
    """The ``base64-token rank`` lines of a ``.tiktoken`` file."""
    ranks: dict[bytes, int] = {}
    for line in Path(tiktoken_file).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_tokenizer_json(tiktoken_file: Path, out_path: Path) -> Path:
    """Write the real gpt-oss tokenizer (o200k ranks + harmony specials) as a HF ``tokenizer.json``.

    Merges come from the ranks: every split of a token into two tokens is a merge, ordered by the rank of the
    merged token (ties by the ranks of the parts). With ``ignore_merges`` (a word that is itself in the vocab
    wins outright, as in tiktoken) this reproduces tiktoken's byte-pair encoding.
    """
    ranks = read_tiktoken_ranks(tiktoken_file)
    if len(ranks) != FIRST_SPECIAL_ID:
        raise ValueError(f"{tiktoken_file}: expected {FIRST_SPECIAL_ID} ranks (o200k_base), found {len(ranks)}")
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None:
                merges.append((rank, left_rank, right_rank, left, right))
    merges.sort(key=lambda m: m[:3])
    vocab = {_as_text(token): rank for token, rank in ranks.items()}
    return _assemble(vocab, [(_as_text(m[3]), _as_text(m[4])) for m in merges], out_path)


# Words the small tokenizer learns as whole tokens, so tests see multi-byte tokens and BPE merges at work.
SMALL_WORDS = (
    "assistant",
    "analysis",
    "commentary",
    "final",
    "user",
    "system",
    "developer",
    "functions",
    "json",
    " the",
    " to",
    "ing",
    "Hello",
    " world",
)


def build_small_tokenizer_json(out_path: Path) -> Path:
    """Write a tiny byte-level BPE tokenizer with every harmony special token at its real id.

    Any text encodes (the 256 byte tokens cover it); ``SMALL_WORDS`` become single tokens through left-to-right
    merges (ids 256 and up). Special tokens sit at 199998..201087 inside the sparse vocabulary.
    """
    vocab = {_as_text(bytes([b])): b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in SMALL_WORDS:
        data = word.encode("utf-8")
        for end in range(2, len(data) + 1):
            left, right, merged = _as_text(data[: end - 1]), _as_text(data[end - 1 : end]), _as_text(data[:end])
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
    vocab.update(harmony_special_tokens())
    return _assemble(vocab, merges, out_path)
