"""A chat history whose truth is token ids, so the engine's KV cache stays valid from turn to turn.

    convo = Conversation(tokenizer, options, messages=[{"role": "user", "content": "Hi"}])
    prompt = convo.prompt_tokens()            # history + <|start|>assistant
    convo.append_completion(generated_ids)    # the model's own ids, verbatim (<|return|> stored as <|end|>)
    convo.append({"role": "tool", "name": "python", "channel": "analysis", "content": "42"})
    convo.append({"role": "user", "content": "Thanks"})
    new_prompt = convo.prompt_tokens()
    keep = common_prefix(prompt + generated_ids, new_prompt)   # KV positions the engine can keep

Generated messages are never re-rendered: they keep the model's layout (``<|channel|>commentary to=functions.x``),
which openai-harmony would rewrite recipient-first (spec §7 pitfall 1). Dict messages render exactly as
openai-harmony renders them.

The trade-off of dropping CoT. Analysis of finished turns must go (docs/format.md: the model was trained without
earlier CoT), but dropping it rewrites tokens *inside* the history, which invalidates the KV cache from the first
dropped message on. The damage is bounded: when a user message arrives, only the turn that just finished still
has analysis (earlier turns lost theirs when their own next user message came), so the engine re-prefills that
turn's final answer and tool exchanges plus the new user message; everything before that turn is unchanged.
Within a turn (a tool loop) nothing is dropped, so each tool round only appends. ``tokens()`` is always the exact
history and ``common_prefix`` tells the engine how much of its cache survives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptoss_cli.harmony.parser import parse_header
from gptoss_cli.harmony.render import (
    ChatOptions,
    HarmonyMessage,
    finished_analysis,
    generation_prompt,
    render_message,
    render_preamble,
    split_leading_instructions,
    to_harmony_messages,
)
from gptoss_cli.harmony.tokenizer import CALL, END, ENDOFTEXT, MESSAGE, RETURN, START, Tokenizer


@dataclass(frozen=True)
class Entry:
    """One message of the history: its ids and the header facts the CoT-dropping rule needs."""

    ids: tuple[int, ...]
    message: HarmonyMessage  # content is empty for generated entries: the ids are the truth


def common_prefix(old: Sequence[int], new: Sequence[int]) -> int:
    """How many leading ids two token lists share: the KV positions that stay valid."""
    n = min(len(old), len(new))
    for i in range(n):
        if old[i] != new[i]:
            return i
    return n


class Conversation:
    """System + developer preamble (fixed at creation) and a list of message entries."""

    def __init__(
        self, tokenizer: Tokenizer, options: ChatOptions = ChatOptions(), messages: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.options = options
        instructions, rest = split_leading_instructions(messages)
        self._preamble = tuple(render_preamble(options, tokenizer, instructions))
        self._entries: list[Entry] = []
        for message in rest:
            self.append(message)

    def append(self, message: Mapping[str, Any]) -> None:
        """Add a dict message (user turn, tool result, assistant history...), rendered as openai-harmony does."""
        for m in to_harmony_messages([message]):
            self._entries.append(Entry(tuple(render_message(m, self.tokenizer)), m))

    def append_completion(self, ids: Sequence[int]) -> None:
        """Add what the model generated after ``prompt_tokens()``, kept id for id.

        Only the stop handling changes: ``<|return|>`` and ``<|endoftext|>`` become ``<|end|>``, a stop token
        right after a message end is dropped, and an unfinished last message (max tokens, interrupt) is closed
        with ``<|end|>``. Tokens never fed back to the model (the final stop) are the only ones touched.
        """
        current = list(generation_prompt(self.tokenizer))
        for token_id in ids:
            if not current:
                if token_id in (END, RETURN, CALL, ENDOFTEXT):
                    continue
                current = []
            if token_id in (RETURN, ENDOFTEXT):
                token_id = END
            current.append(token_id)
            if token_id in (END, CALL):
                self._add_generated(current)
                current = []
        if ids and current:
            self._add_generated(current + [END])

    def _add_generated(self, ids: list[int]) -> None:
        end = ids.index(MESSAGE) if MESSAGE in ids else 0
        starts = [i for i, t in enumerate(ids[:end]) if t == START]
        header_ids = ids[starts[-1] + 1 if starts else 0 : end]
        header, _, _ = parse_header(self.tokenizer.decode(header_ids), None)
        message = HarmonyMessage(header.role, "", header.name, header.channel, header.recipient, header.content_type)
        self._entries.append(Entry(tuple(ids), message))

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    def tokens(self) -> list[int]:
        """The history as the model must see it now (finished turns' CoT dropped)."""
        dropped = finished_analysis([e.message for e in self._entries])
        ids = list(self._preamble)
        for i, entry in enumerate(self._entries):
            if i not in dropped:
                ids.extend(entry.ids)
        return ids

    def prompt_tokens(self) -> list[int]:
        """``tokens()`` + ``<|start|>assistant``: what to prefill before sampling."""
        return self.tokens() + generation_prompt(self.tokenizer)
