"""Grouped-query self-attention with optional QK-norm and per-layer sliding window.

Owns: the attention block and the per-step ``AttentionBatch`` metadata (positions, cache slots and
the boolean masks shared by every layer of one type). The KV cache object is passed in from the
engine; without one (training, whole-sequence scoring) keys are the step's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .norm import RMSNorm
from .rope import apply_rotary


@dataclass
class AttentionBatch:
    """What one forward step needs to know about its sequences.

    ``positions`` [B, T]: absolute position of every input token (right padding continues the count).
    ``slot_ids`` [B]: the KV-cache slot of each row (None without a cache).
    ``kv_len``: keys 0..kv_len-1 of each slot are read (with a cache).
    ``masks``: layer type -> bool [B, 1, T, S], True where a query may attend a key.
    """

    positions: torch.Tensor
    slot_ids: torch.Tensor | None = None
    kv_len: int = 0
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    slot_range_start: int | None = None  # set when slot_ids are consecutive: the cache reads a view

    @classmethod
    def build(cls, positions: torch.Tensor, layer_types: tuple[str, ...], sliding_window: int | None,
              slot_ids: torch.Tensor | None = None, kv_len: int | None = None,
              slot_range_start: int | None = None) -> "AttentionBatch":
        q = positions.unsqueeze(-1)  # [B, T, 1]
        if slot_ids is not None:
            kv_len = int(kv_len if kv_len is not None else positions.max().item() + 1)
            k = torch.arange(kv_len, device=positions.device).view(1, 1, -1)
        else:
            kv_len = positions.shape[1]
            k = positions.unsqueeze(1)  # keys are this step's own tokens
        causal = k <= q
        masks = {"full_attention": causal.unsqueeze(1)}
        if "sliding_attention" in layer_types:
            # transformers' sliding overlay: key visible when kv_idx > q_idx - window.
            masks["sliding_attention"] = (causal & (k > q - sliding_window)).unsqueeze(1)
        return cls(positions=positions, slot_ids=slot_ids, kv_len=kv_len, masks=masks,
                   slot_range_start=slot_range_start)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        h, q, kv = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(h, q, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, kv, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, kv, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q, h, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: AttentionBatch,
                kv_cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, batch, k, v)  # [B, kvh, S, d]
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=batch.masks[self.layer_type], scale=self.scaling,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
