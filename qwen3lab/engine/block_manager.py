"""KV-cache block allocation with prefix caching: plain Python, no tensors.

Blocks are reference-counted. A full block is keyed by a hash of its tokens chained with the
previous block's key (the first block with the sequence's ``cache_salt``, e.g. its LoRA adapter,
whose keys and values differ from the base model's), so two prompts that share a prefix share its
blocks. A block whose count drops to zero keeps its key and sits in the free list as evictable:
reused if the same prefix comes back, recycled least-recently-freed first otherwise. Freed blocks
without a key hold nothing anyone can reuse: they are passed to ``on_discard`` (the engine hands
their memory back to the OS).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from .sequence import Sequence


def block_key(parent: bytes | None, tokens: list[int]) -> bytes:
    # A cryptographic digest, not hash(): a collision would silently reuse another prompt's keys.
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


NULL_BLOCK = 0  # with reserve_null: a block never handed out, standing for blocks a table no longer holds


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 table: str = "block_table", hashes: str = "block_hashes", reserve_null: bool = False):
        """``table`` / ``hashes``: the sequence attributes holding this pool's block table and block keys
        (a second pool, as the sliding layers' in ``hybrid_blocks.py``, keeps its own); ``reserve_null``:
        block 0 is never allocated, so tables can hold it for blocks they gave back."""
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.table, self.hashes = table, hashes
        self.ref = [0] * num_blocks
        self.key: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        first = 1 if reserve_null else 0
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(first, num_blocks))
        self.capacity = num_blocks - first
        self.hit_tokens = 0  # prefix-cache statistics, for metrics
        self.queried_tokens = 0
        self.on_discard = None  # called with freed blocks whose contents nothing can reuse

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.capacity

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(getattr(seq, self.table)))

    def room(self, seq: Sequence) -> int:
        """Positions past the computed ones that the sequence's blocks and the free ones can hold."""
        return (len(getattr(seq, self.table)) + len(self.free)) * self.block_size - seq.num_computed

    def trim(self, seq: Sequence) -> None:
        """Give back blocks no later query reads (every block is read by full attention)."""

    def _take(self, block: int) -> None:
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1

    def admit(self, seq: Sequence) -> int:
        """Attach cached blocks of the longest matching prefix; return how many tokens they cover.

        At least one token is left to compute, since its logits pick the next token. A sequence that
        scores its prompt (``prompt_logprobs``) takes no hits: every prompt position needs its logits;
        its blocks are still published for later prompts.
        """
        hits: list[int] = []
        keys: list[bytes] = []
        if self.enable_prefix_caching and seq.params.prompt_logprobs is None:
            tokens, bs = seq.all_token_ids, self.block_size
            parent = seq.cache_salt
            for i in range((len(tokens) - 1) // bs):
                parent = block_key(parent, tokens[i * bs: (i + 1) * bs])
                block = self.cached.get(parent)
                if block is None:
                    break
                hits.append(block)
                keys.append(parent)
            self.queried_tokens += len(tokens)
            self.hit_tokens += len(hits) * bs
        for b in hits:
            self._take(b)
        setattr(seq, self.table, hits)
        setattr(seq, self.hashes, keys)
        return len(hits) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to hold ``num_tokens`` positions; False (and no change) if the pool is short."""
        need = self.blocks_needed(seq, num_tokens)
        if need > len(self.free):
            return False
        table = getattr(seq, self.table)
        for _ in range(need):
            block, _ = self.free.popitem(last=False)  # least recently freed first
            if self.key[block] is not None:  # evict its prefix-cache entry
                if self.cached.get(self.key[block]) == block:
                    del self.cached[self.key[block]]
                self.key[block] = None
            self.ref[block] = 1
            table.append(block)
        return True

    def register(self, seq: Sequence) -> None:
        """Key every block that is now fully computed, so later prompts can reuse it."""
        if not self.enable_prefix_caching:
            return
        bs, tokens = self.block_size, seq.all_token_ids
        hashes, table = getattr(seq, self.hashes), getattr(seq, self.table)
        # Draft tokens may be computed past the known tokens; only known tokens are keyed.
        while len(hashes) < min(seq.num_computed, len(tokens)) // bs:
            i = len(hashes)
            key = block_key(hashes[-1] if hashes else seq.cache_salt, tokens[i * bs: (i + 1) * bs])
            hashes.append(key)
            block = table[i]
            if block == NULL_BLOCK and self.capacity < self.num_blocks:
                continue
            if key not in self.cached:
                self.cached[key] = block
                self.key[block] = key

    def forget_cached(self) -> None:
        """Drop every prefix-cache entry (the model changed, so cached keys and values no longer match)."""
        self.cached.clear()
        self.key = [None] * self.num_blocks

    def give_back(self, blocks) -> None:
        """Drop one reference to each block; unreferenced ones become free (evictable if keyed), and
        those holding nothing reusable go to ``on_discard``."""
        garbage = []
        reserved = self.capacity < self.num_blocks
        for block in blocks:
            if reserved and block == NULL_BLOCK:
                continue
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
                if self.key[block] is None:
                    garbage.append(block)
        if garbage and self.on_discard is not None:
            self.on_discard(garbage)

    def release(self, seq: Sequence) -> None:
        # Tail blocks are freed first so they are evicted before the shared prefix blocks.
        self.give_back(reversed(getattr(seq, self.table)))
        setattr(seq, self.table, [])
        setattr(seq, self.hashes, [])
