"""State of one generated sequence (one sample of one request): plain Python, no tensors.

The engine appends tokens and text; the scheduler reads lengths and status; neither knows about
the model. ``num_computed`` counts tokens whose keys/values are in the cache, so a chunked
prefill, a decode step and a speculative rollback are all just changes to that one number.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from ..sampling import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class SpecDraft:
    """Speculative draft of one sequence for one step: tokens fed after its last real token, the
    draft's distributions they were drawn from ([k, vocab] tensor, or None for a deterministic
    drafter), and their tree (parent index of each token, -1 for the last real token; None: a chain)."""

    tokens: list[int] = field(default_factory=list)
    probs: Any = None
    parents: list[int] | None = None

    @property
    def tree(self) -> tuple[int, ...] | None:
        """The parents when the draft is a non-empty tree, else None (a chain or nothing)."""
        return tuple(self.parents) if self.parents is not None and self.tokens else None

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (tree nodes come after their parents: a cut keeps a tree)."""
        self.tokens = self.tokens[:n]
        if self.probs is not None:
            self.probs = self.probs[:n]
        if self.parents is not None:
            self.parents = self.parents[:n]

    def clear(self) -> None:
        # New objects, not in-place clears: whoever holds the old token list keeps its contents.
        self.tokens, self.probs, self.parents = [], None, None


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int  # sample number within the request (for n > 1)
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved budget: min(params.max_tokens, context room)
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    # With params.prompt_logprobs: entry p scores prompt token p given the tokens before it (None for p = 0).
    prompt_logprobs: list[dict[int, float] | None] = field(default_factory=lambda: [None])
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)  # KV-cache blocks, in position order
    # The sliding-window layers' own blocks when they have a pool of their own (engine/hybrid_blocks.py):
    # the null block where a block left the window.
    sliding_table: list[int] = field(default_factory=list)
    sliding_hashes: list[bytes] = field(default_factory=list)
    sliding_trimmed: int = 0  # blocks before this index are given back (or sinks)
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache keys of the full blocks
    num_computed: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    draft: SpecDraft = field(default_factory=SpecDraft)  # this step's speculative draft
    num_drafted: int = 0  # speculative totals: drafts proposed, accepted, verification steps
    num_accepted: int = 0
    num_spec_steps: int = 0
    text: str = ""  # output text emitted so far (stop strings already cut)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or string that ended it
    generator: Any = None  # the engine's per-sequence RNG, opaque here
    detok: Any = None  # the engine's incremental detokenizer, opaque here
    pending_text: str = ""  # decoded but held back: it could still become a stop string
    # Optional constrained decoding (JSON schema, tool-call grammar): an object with
    # ``allowed_tokens(vocab_size) -> torch.BoolTensor | None`` and ``advance(token_id)``.
    constraint: Any = None
    # Multi-LoRA serving: the adapter slot its tokens run with (0: the base model), and the salt of its
    # prefix-cache keys, so that blocks computed under one adapter are never reused under another.
    lora_slot: int = 0
    cache_salt: bytes | None = None
    # Thinking budget: the output closed its thought (</think> generated or forced)
    thought_closed: bool = False
    # Long-only rotary scaling (qwen3lab/rope_scaling.py): whether this sequence runs scaled.
    long_rope: bool = False

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def feed_token_ids(self) -> list[int]:
        """Tokens the model may be fed: the sequence, then this step's draft tokens."""
        return self.all_token_ids + self.draft.tokens if self.draft.tokens else self.all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def in_prefill(self) -> bool:
        """True while prompt tokens remain to be fed (the last one is fed by the step that samples)."""
        return self.num_computed < self.num_tokens - 1

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status, self.finish_reason, self.stop_reason = Status.FINISHED, reason, stop_reason
