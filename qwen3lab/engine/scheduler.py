"""Continuous-batching scheduler over a paged KV cache: plain Python, unit-tested without a model.

Every step has a token budget. Running decodes come first (one token each), then prompt chunks of
sequences still prefilling, then newly admitted requests, so a long prompt is split over steps and
shares them with decodes (chunked prefill). When the pool has no block for a decode, the most
recently admitted sequence is preempted: its blocks are freed and it is recomputed later.
Finished and cancelled sequences leave between steps and free their blocks at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens fed for each sequence this step

    def samples(self, i: int) -> bool:
        """Whether row i reaches the end of its known tokens, so its last logits pick the next one."""
        s = self.seqs[i]
        return s.num_computed + self.num_new_tokens[i] == s.num_tokens + len(s.draft.tokens)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int = 16, max_num_batched_tokens: int = 512):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks; it is recomputed from its tokens when next admitted."""
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.num_computed, seq.status = 0, Status.WAITING
        seq.draft.clear()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> ScheduledBatch | None:
        budget = self.max_num_batched_tokens
        seqs: list[Sequence] = []
        counts: list[int] = []
        # 1. Decodes of running sequences (with their draft tokens, if speculating), preempting from
        # the back when the pool is full.
        for seq in list(self.running):
            if seq not in self.running or seq.in_prefill or budget == 0:
                continue
            if len(seq.draft.tokens) >= budget:  # drafts past the step's budget are dropped
                seq.draft.truncate(budget - 1)
            n = 1 + len(seq.draft.tokens)
            while not self.blocks.allocate(seq, seq.num_computed + n):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                seqs.append(seq)
                counts.append(n)
                budget -= n
        # 2. Prompt chunks of sequences already admitted.
        for seq in self.running:
            if budget == 0:
                break
            if seq.in_prefill and seq not in seqs:
                n = self._fit(seq, budget)
                if n:
                    seqs.append(seq)
                    counts.append(n)
                    budget -= n
        # 3. New requests while there is room.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            seq.num_computed = self.blocks.admit(seq)
            n = self._fit(seq, budget)
            if not n:
                self.blocks.release(seq)
                seq.num_computed = 0
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            seq.num_cached_tokens = max(seq.num_cached_tokens, seq.num_computed)
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        return ScheduledBatch(seqs, counts) if seqs else None

    def _fit(self, seq: Sequence, budget: int) -> int:
        """Allocate blocks for the largest prompt chunk that fits the budget and the pool."""
        n = min(seq.num_tokens - seq.num_computed, budget)
        while n > 0 and not self.blocks.allocate(seq, seq.num_computed + n):
            # Shrink to what the free blocks can hold (whole blocks beyond those already owned).
            n = min(n - 1, self.blocks.room(seq))
        return max(n, 0)

    def step_done(self, batch: ScheduledBatch) -> None:
        """Advance computed counts and publish newly full blocks to the prefix cache."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed += n
            self.blocks.register(seq)
            self.blocks.trim(seq)

    def release(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
