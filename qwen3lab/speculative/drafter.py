"""The contract between the engine and a drafter: everything the engine calls or reads on one.

Leaves out: how a drafter drafts (``ngram.py``, ``draft_model.py``, ``eagle3.py``) and verification
(``verify.py``, run by the engine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ..engine.sequence import Sequence


@runtime_checkable
class Drafter(Protocol):
    num_tokens: int  # most draft tokens (tree nodes) per sequence and step
    # Target layers whose outputs ``observe`` needs for every fed token; () for drafters that need none.
    hidden_layers: tuple[int, ...]

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> None:
        """Set each sequence's ``draft`` (``SpecDraft``): at most ``budgets[i]`` tokens, their draft
        distributions for sampled drafts (None when deterministic), their tree parents (None: a chain)."""

    def observe(self, seqs: list[Sequence], num_new_tokens: list[int], starts: list[int],
                hidden: list[torch.Tensor]) -> None:
        """After each target forward that captured ``hidden_layers``: row ``starts[i]`` of every
        ``hidden`` tensor is the first of the ``num_new_tokens[i]`` tokens fed for ``seqs[i]``."""

    def on_verified(self, seq: Sequence, num_accepted: int, path: list[int] | None = None) -> None:
        """Roll the drafter's own state back to the accepted drafts (``path``: the accepted tree nodes,
        None for a chain)."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was aborted: drop its state."""
