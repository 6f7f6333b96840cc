"""Paged KV cache storage: one pool of fixed-size blocks per layer.

Owns the tensors only. ``write`` puts a step's keys/values at flat slot indices, ``gather`` reads
a group of sequences' keys by index; which block belongs to which sequence is the block manager's
business (``block_manager.py``). A token's slot is ``block_id * block_size + offset``.
"""

from __future__ import annotations

import math
import mmap

import torch

from ..config import ModelConfig


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


def pool_num_blocks(config: ModelConfig, block_size: int, dtype: torch.dtype, memory_gb: float,
                    num_seqs: int, seq_len: int) -> int:
    """Blocks for ``num_seqs`` sequences of ``seq_len`` tokens, capped by ``memory_gb`` (at least one)."""
    wanted = -(-num_seqs * seq_len // block_size)
    return max(1, min(wanted, int(memory_gb * 2**30 // bytes_per_block(config, block_size, dtype))))


def _zeroed(shape: tuple, dtype: torch.dtype, device: torch.device):
    """A zero tensor and the anonymous mapping behind it (CPU), or (tensor, None).

    torch.zeros writes every byte, so a pool sized for the worst case would be resident from the start
    (measured: 2 GB of RSS for a 2 GB pool holding one short sequence). Pages of an anonymous mapping
    read as zeros and take memory only once written, so the pool costs what the sequences use, as
    llama.cpp's and vLLM's users expect from a CPU process. Private, so that ``discard`` can give
    pages back (a shared mapping keeps them in its shmem object).
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes == 0:
        return torch.zeros(shape, dtype=dtype, device=device), None
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mapping, dtype=torch.uint8).view(dtype).view(shape), mapping


class PagedKVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        shape = (num_blocks * block_size, config.num_key_value_heads, config.head_dim)
        # Zeros, not garbage: a gather may touch never-written slots (masked, but 0 * NaN would be NaN).
        pool, self._mapping = _zeroed((2, config.num_hidden_layers, *shape), dtype, torch.device(device))
        self.k, self.v = list(pool[0]), list(pool[1])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [N, kvh, d] for the N slots."""
        # index_copy_, not advanced-index assignment: index_put_ measured 6-25 ms for 16 rows on a busy
        # 2-core machine, index_copy_ 5-9 us.
        self.k[layer].index_copy_(0, slots, k.to(self.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.dtype))

    def discard(self, blocks: list[int]) -> None:
        """Give the memory of freed blocks back to the OS; their slots read as zeros again. Only whole
        pages inside runs of consecutive blocks go (a 16-token block of Qwen3-4B is 32 KB per layer)."""
        if self._mapping is None or not blocks:
            return
        plane = self.k[0].numel() * self.k[0].element_size()  # one layer's keys (or values)
        per_block, page = plane // self.num_blocks, mmap.PAGESIZE
        blocks = sorted(blocks)
        runs, start = [], blocks[0]
        for a, b in zip(blocks, blocks[1:] + [None]):
            if b != a + 1:
                runs.append((start, a + 1))
                start = b
        for p in range(2 * len(self.k)):
            for b0, b1 in runs:
                lo = -(-(p * plane + b0 * per_block) // page) * page
                hi = (p * plane + b1 * per_block) // page * page
                if hi > lo:
                    self._mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy every layer's keys/values from flat slots ``src`` to ``dst`` (an accepted tree path
        into consecutive slots)."""
        for pool in self.k + self.v:
            pool.index_copy_(0, dst, pool.index_select(0, src))

    def gather(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index: [G, S] slots -> keys, values [G, S, kvh, d]."""
        # index_select on the flat slot axis is several times faster on CPU than advanced indexing.
        flat, shape = index.reshape(-1), (*index.shape, *self.k[layer].shape[1:])
        return self.k[layer].index_select(0, flat).view(shape), self.v[layer].index_select(0, flat).view(shape)
