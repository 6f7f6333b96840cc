"""Block tables per layer group: full-attention layers keep every block, sliding-window layers give
back the blocks that left their window.

A model with sliding layers (a checkpoint's ``layer_types`` or a run-time hybrid layout) keeps two
pools (``PagedKVCache`` with ``sliding_blocks``): the full layers' blocks, which hold the whole
context, and the sliding layers' blocks, which only need the last ``window`` positions and the first
``sink_tokens``. Each sequence has a block table per pool (``block_table``, ``sliding_table``), as in
vLLM's hybrid KV-cache manager. Once a sequence has computed ``c`` tokens, no later query (at
position c or more) reads a key at or before ``c - window`` unless it is a sink, so those blocks go
back to the sliding pool and the table holds the null block in their place (block 0, never handed
out, masked by every read). With 9 of 36 layers on full attention a long context then costs about a
quarter of the KV memory.

Prefix caching covers both pools with the same block keys. A prefix hit must find, in the sliding
pool, the blocks its next query reads (the sinks and the last window); the hit is cut back to the
longest prefix for which they are all still cached.
"""

from __future__ import annotations

from .block_manager import NULL_BLOCK, BlockManager
from .sequence import Sequence


class HybridBlockManager:
    def __init__(self, full_blocks: int, sliding_blocks: int, block_size: int, window: int, sinks: int,
                 enable_prefix_caching: bool = True):
        self.full = BlockManager(full_blocks, block_size, enable_prefix_caching)
        self.sliding = BlockManager(sliding_blocks, block_size, enable_prefix_caching, table="sliding_table",
                                    hashes="sliding_hashes", reserve_null=True)
        self.block_size, self.window, self.sinks = block_size, window, sinks
        self.enable_prefix_caching = enable_prefix_caching

    # What the engine's statistics read: the full pool's, which bounds the context.
    @property
    def num_blocks(self) -> int:
        return self.full.num_blocks

    @property
    def num_free(self) -> int:
        return self.full.num_free

    @property
    def usage(self) -> float:
        return max(self.full.usage, self.sliding.usage)

    @property
    def hit_tokens(self) -> int:
        return self.full.hit_tokens

    @property
    def queried_tokens(self) -> int:
        return self.full.queried_tokens

    def set_discard(self, full, sliding) -> None:
        self.full.on_discard, self.sliding.on_discard = full, sliding

    def _read(self, i: int, position: int) -> bool:
        """Whether a query at ``position`` (or later) reads block i on a sliding layer."""
        bs = self.block_size
        return i * bs < self.sinks or (i + 1) * bs > position - self.window + 1

    def admit(self, seq: Sequence) -> int:
        hit = self.full.admit(seq) // self.block_size
        keys, cached = seq.block_hashes, self.sliding.cached
        h = hit
        while h > 0 and not all(keys[i] in cached for i in range(h) if self._read(i, h * self.block_size)):
            h -= 1
        if h < hit:  # the sliding pool lost part of the window: recompute from the longest prefix it holds
            self.full.give_back(reversed(seq.block_table[h:]))
            del seq.block_table[h:], seq.block_hashes[h:]
            self.full.hit_tokens -= (hit - h) * self.block_size
        table = []
        for i in range(h):
            if self._read(i, h * self.block_size):
                block = cached[keys[i]]
                self.sliding._take(block)
                table.append(block)
            else:
                table.append(NULL_BLOCK)
        seq.sliding_table, seq.sliding_hashes = table, list(keys[:h])
        seq.sliding_trimmed = 0
        return h * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        if (self.full.blocks_needed(seq, num_tokens) > self.full.num_free
                or self.sliding.blocks_needed(seq, num_tokens) > self.sliding.num_free):
            return False
        return self.full.allocate(seq, num_tokens) and self.sliding.allocate(seq, num_tokens)

    def room(self, seq: Sequence) -> int:
        return min(self.full.room(seq), self.sliding.room(seq))

    def register(self, seq: Sequence) -> None:
        self.full.register(seq)
        self.sliding.register(seq)

    def trim(self, seq: Sequence) -> None:
        """Give back the sliding blocks no later query reads. Counted from the known tokens, not from
        computed draft tokens: verification may reject those and feed an earlier position again."""
        position = min(seq.num_computed, seq.num_tokens)
        table, dead = seq.sliding_table, []
        i = max(seq.sliding_trimmed, -(-self.sinks // self.block_size))
        while i < len(table) and not self._read(i, position):
            if table[i] != NULL_BLOCK:
                dead.append(table[i])
                table[i] = NULL_BLOCK
            i += 1
        seq.sliding_trimmed = i
        if dead:
            self.sliding.give_back(dead)

    def release(self, seq: Sequence) -> None:
        self.full.release(seq)
        self.sliding.release(seq)
        seq.sliding_trimmed = 0

    def forget_cached(self) -> None:
        self.full.forget_cached()
        self.sliding.forget_cached()
