"""Streaming detokenization: token ids in, text deltas out.

This module owns turning a growing list of generated ids into text pieces for
streaming. It never emits a broken UTF-8 sequence (a character split across
tokens decodes to U+FFFD until its last byte arrives), and the deltas plus
`flush()` concatenate to `tokenizer.decode(all_ids)`. It does not parse tags
or tool calls (see `qwen3lab.chat`).

Technique (as vLLM / text-generation-inference): keep two offsets into the ids.
`prefix_offset..read_offset` is a short window of already emitted tokens that
gives the decoder context (byte-level merges, SentencePiece leading spaces);
each step decodes only `ids[prefix_offset:]`, so work per token is O(window).
"""

from __future__ import annotations

from collections.abc import Iterable

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed ids one at a time with `step`, get the newly completed text back."""

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window
        self.read_offset = 0  # ids before this are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, token_id: int) -> str:
        """Append one id; return the text it completes ("" while a character is still partial)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        # A trailing U+FFFD means the last character is incomplete: wait for more bytes.
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def extend(self, token_ids: Iterable[int]) -> str:
        """Feed several ids; return the concatenated deltas."""
        return "".join(self.step(t) for t in token_ids)

    def flush(self) -> str:
        """Return whatever is still held back (incomplete bytes decode to U+FFFD, as in `decode`)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]
