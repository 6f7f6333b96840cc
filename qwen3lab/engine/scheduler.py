"""Continuous-batching scheduler over KV-cache slots: plain Python, unit-testable without a model.

Each step either feeds prompt chunks (prefill, bounded by a token budget so a long prompt never
needs its whole attention matrix at once) or one token for every running sequence (decode).
Sequences join when a slot is free and leave the moment they finish, between steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens fed for each sequence this step
    is_prefill: bool

    def samples(self, i: int) -> bool:
        """Whether row i's step reaches the end of its known tokens, so its logits pick the next one."""
        s = self.seqs[i]
        return s.num_computed + self.num_new_tokens[i] == s.num_tokens


class Scheduler:
    def __init__(self, max_num_seqs: int = 16, max_num_batched_tokens: int = 2048):
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_num_seqs - 1, -1, -1))

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot, seq.status = self.free_slots.pop(), Status.RUNNING
            self.running.append(seq)

    def schedule(self) -> ScheduledBatch | None:
        self._admit()
        if not self.running:
            return None
        prefilling = [s for s in self.running if s.in_prefill]
        if prefilling:
            budget, seqs, counts = self.max_num_batched_tokens, [], []
            for s in prefilling:
                n = min(s.num_tokens - s.num_computed, budget)
                if n <= 0:
                    break
                seqs.append(s)
                counts.append(n)
                budget -= n
            return ScheduledBatch(seqs, counts, is_prefill=True)
        return ScheduledBatch(list(self.running), [1] * len(self.running), is_prefill=False)

    def release(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its slot at once."""
        if seq in self.running:
            self.running.remove(seq)
            self.free_slots.append(seq.slot)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.slot = None
