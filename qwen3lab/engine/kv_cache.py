"""Paged KV cache storage: one pool of fixed-size blocks per layer.

Owns the tensors only. ``write`` puts a step's keys/values at flat slot indices, ``gather`` reads
a group of sequences' keys by index; which block belongs to which sequence is the block manager's
business (``block_manager.py``). A token's slot is ``block_id * block_size + offset``.

``kv_cache_dtype="int8"`` stores keys and values as int8 with one fp32 scale per token and kv head
(symmetric, absmax / 127, as llama.cpp's q8_0 does per 32 values and vLLM's int8 KV per token-head):
half the bytes of bf16 (plus 4 bytes per 128-wide head). The decode kernel reads int8 directly;
SDPA and the prefill pieces read dequantized copies of what they touch (``KVLayer``).
"""

from __future__ import annotations

import math
import mmap

import torch

from ..config import ModelConfig


KV_CACHE_DTYPES = ("auto", "int8")


def check_kv_cache_dtype(name: str) -> str:
    if name not in KV_CACHE_DTYPES:
        hint = (" (fp8 needs hardware fp8 arithmetic, which this engine's CPU kernels do not have; int8 gives the "
                "same memory)" if name.startswith("fp8") else "")
        raise ValueError(f"kv_cache_dtype {name!r} is not supported{hint}; choose one of {', '.join(KV_CACHE_DTYPES)}")
    return name


def bytes_per_token(config: ModelConfig, dtype: torch.dtype, kv_cache_dtype: str = "auto") -> int:
    """KV bytes of one token over every layer: keys and values, plus int8's per-head scales."""
    per_head = config.head_dim * dtype.itemsize if kv_cache_dtype == "auto" else config.head_dim + 4
    return 2 * config.num_hidden_layers * config.num_key_value_heads * per_head


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype, kv_cache_dtype: str = "auto") -> int:
    return bytes_per_token(config, dtype, kv_cache_dtype) * block_size


def pool_num_blocks(config: ModelConfig, block_size: int, dtype: torch.dtype, memory_gb: float,
                    num_seqs: int, seq_len: int, kv_cache_dtype: str = "auto") -> int:
    """Blocks for ``num_seqs`` sequences of ``seq_len`` tokens, capped by ``memory_gb`` (at least one)."""
    wanted = -(-num_seqs * seq_len // block_size)
    per_block = bytes_per_block(config, block_size, dtype, kv_cache_dtype)
    return max(1, min(wanted, int(memory_gb * 2**30 // per_block)))


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, kvh, d] -> (int8 [N, kvh, d], fp32 scales [N, kvh]): symmetric absmax per token and head."""
    x = x.float()
    scale = x.abs().amax(-1) / 127.0
    q = (x / scale.clamp_min(1e-30).unsqueeze(-1)).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


class KVLayer:
    """One layer's pools as attention reads them: ``span`` (consecutive slots) and ``select`` (slots by
    index) give keys and values in the compute dtype, views where the pool is not quantized."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        self.k, self.v, self.k_scale, self.v_scale = k, v, k_scale, v_scale
        self.dtype = dtype or k.dtype

    def _out(self, k, v, ks, vs):
        if self.k_scale is None:
            return k, v
        return (k.to(self.dtype) * ks.unsqueeze(-1).to(self.dtype), v.to(self.dtype) * vs.unsqueeze(-1).to(self.dtype))

    def span(self, s0: int, s1: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k_scale is None:
            return self.k[s0:s1], self.v[s0:s1]
        return self._out(self.k[s0:s1], self.v[s0:s1], self.k_scale[s0:s1], self.v_scale[s0:s1])

    def select(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k.index_select(0, flat), self.v.index_select(0, flat)
        if self.k_scale is None:
            return k, v
        return self._out(k, v, self.k_scale.index_select(0, flat), self.v_scale.index_select(0, flat))


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
                 device: torch.device | str = "cpu", kv_cache_dtype: str = "auto", sliding_blocks: int | None = None):
        """``dtype``: the model's compute dtype (what reads return); ``kv_cache_dtype``: "auto" (store in
        ``dtype``) or "int8"; ``sliding_blocks``: give the sliding-window layers a pool of their own of
        this many blocks (``hybrid_blocks.py``), the full layers keeping ``num_blocks``."""
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        self.kv_cache_dtype = check_kv_cache_dtype(kv_cache_dtype)
        self.sliding_blocks = sliding_blocks
        quantized = kv_cache_dtype == "int8"
        kinds = config.layer_types if sliding_blocks else ("full_attention",) * config.num_hidden_layers
        self.group = [int(t == "sliding_attention") for t in kinds]  # per layer: 0 full pool, 1 sliding pool
        device = torch.device(device)
        self.k: list[torch.Tensor] = [None] * config.num_hidden_layers
        self.v: list[torch.Tensor] = [None] * config.num_hidden_layers
        self.k_scale = [None] * config.num_hidden_layers if quantized else None
        self.v_scale = [None] * config.num_hidden_layers if quantized else None
        self._mappings: list = []  # per group: the anonymous mapping of its keys/values (CPU), for discard
        self._planes: list[int] = []
        for group, blocks in enumerate((num_blocks, sliding_blocks)):
            layers = [i for i, g in enumerate(self.group) if g == group]
            if not layers:
                self._mappings.append(None)
                self._planes.append(0)
                continue
            shape = (blocks * block_size, config.num_key_value_heads, config.head_dim)
            # Zeros, not garbage: a gather may touch never-written slots (masked, but 0 * NaN would be NaN).
            pool, mapping = _zeroed((2, len(layers), *shape), torch.int8 if quantized else dtype, device)
            self._mappings.append(mapping)
            self._planes.append(pool[0, 0].numel() * pool.element_size())
            if quantized:
                scales, _ = _zeroed((2, len(layers), *shape[:2]), torch.float32, device)
            for j, layer in enumerate(layers):
                self.k[layer], self.v[layer] = pool[0, j], pool[1, j]
                if quantized:
                    self.k_scale[layer], self.v_scale[layer] = scales[0, j], scales[1, j]

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v + (self.k_scale or []) + (self.v_scale or []))

    def block_bytes(self, group: int = 0) -> int:
        """Bytes of one block of a pool, over the layers it holds (scales included)."""
        blocks = self.sliding_blocks if group else self.num_blocks
        return sum(t.numel() * t.element_size() for pools in (self.k, self.v, self.k_scale or [], self.v_scale or [])
                   for layer, t in enumerate(pools) if self.group[layer] == group) // blocks

    def layer(self, layer: int) -> KVLayer:
        if self.k_scale is None:
            return KVLayer(self.k[layer], self.v[layer])
        return KVLayer(self.k[layer], self.v[layer], self.k_scale[layer], self.v_scale[layer], self.dtype)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [N, kvh, d] for the N slots."""
        # index_copy_, not advanced-index assignment: index_put_ measured 6-25 ms for 16 rows on a busy
        # 2-core machine, index_copy_ 5-9 us.
        if self.k_scale is not None:
            (k, ks), (v, vs) = quantize_int8(k), quantize_int8(v)
            self.k_scale[layer].index_copy_(0, slots, ks)
            self.v_scale[layer].index_copy_(0, slots, vs)
            self.k[layer].index_copy_(0, slots, k)
            self.v[layer].index_copy_(0, slots, v)
            return
        self.k[layer].index_copy_(0, slots, k.to(self.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.dtype))

    def discard(self, blocks: list[int], group: int = 0) -> None:
        """Give the memory of freed blocks of one pool (0 full layers', 1 sliding layers') back to the OS;
        their slots read as zeros again. Only whole pages inside runs of consecutive blocks go (a 16-token
        block of Qwen3-4B is 32 KB per layer)."""
        mapping = self._mappings[group]
        if mapping is None or not blocks:
            return
        plane, page = self._planes[group], mmap.PAGESIZE  # one layer's keys (or values)
        per_block = plane // (self.sliding_blocks if group else self.num_blocks)
        blocks = sorted(blocks)
        runs, start = [], blocks[0]
        for a, b in zip(blocks, blocks[1:] + [None]):
            if b != a + 1:
                runs.append((start, a + 1))
                start = b
        for p in range(2 * self.group.count(group)):
            for b0, b1 in runs:
                lo = -(-(p * plane + b0 * per_block) // page) * page
                hi = (p * plane + b1 * per_block) // page * page
                if hi > lo:
                    mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def move(self, src: torch.Tensor, dst: torch.Tensor, group: int = 0) -> None:
        """Copy one pool's keys/values, every layer, from flat slots ``src`` to ``dst`` (an accepted tree
        path into consecutive slots)."""
        for pools in (self.k, self.v, self.k_scale or [], self.v_scale or []):
            for layer, pool in enumerate(pools):
                if self.group[layer] == group:
                    pool.index_copy_(0, dst, pool.index_select(0, src))

    def gather(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index: [G, S] slots -> keys, values [G, S, kvh, d] in the compute dtype."""
        # index_select on the flat slot axis is several times faster on CPU than advanced indexing.
        flat, shape = index.reshape(-1), (*index.shape, *self.k[layer].shape[1:])
        k, v = self.layer(layer).select(flat)
        return k.view(shape), v.view(shape)
