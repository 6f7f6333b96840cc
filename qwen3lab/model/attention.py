"""Grouped-query self-attention with optional QK-norm and per-layer sliding window.

Owns the attention block over a flat token batch. Where keys come from (a paged cache or the
step's own tokens) and which rows attend together is described by ``AttentionMetadata``; the
cache object itself is passed in by the engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention_metadata import AttentionMetadata
from .norm import RMSNorm
from .rope import apply_rotary


# Rows of up to this many new tokens (decodes, speculative verification) go to the per-token decode
# attention where it exists: the same arithmetic for a token whether it is decoded or verified.
PER_TOKEN_ROWS = 16


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
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else 0
        # Optional kernels, set by qwen3lab.kernels.install on the CPU: fused (QK-norm +) RoPE, and
        # one-token-per-row attention read in place from the paged cache (returns None where it does not apply).
        self.norm_rope = None
        self.decode_attention = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                kv_cache=None) -> torch.Tensor:
        """x: [N, hidden] flat tokens -> [N, hidden]."""
        N = x.shape[0]
        if "qkv_proj" in self._modules:  # fused by model/fuse.py
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
            q = q.reshape(N, self.num_heads, self.head_dim)
            k = k.reshape(N, self.num_kv_heads, self.head_dim)
            v = v.reshape(N, self.num_kv_heads, self.head_dim)
        else:
            q = self.q_proj(x).view(N, self.num_heads, self.head_dim)
            k = self.k_proj(x).view(N, self.num_kv_heads, self.head_dim)
            v = self.v_proj(x).view(N, self.num_kv_heads, self.head_dim)
        if self.norm_rope is not None:  # the same computation in one kernel pass each
            q, k = self.norm_rope(q, self.q_norm, cos, sin), self.norm_rope(k, self.k_norm, cos, sin)
        else:
            if self.q_norm is not None:  # Qwen3: per-head RMSNorm before RoPE
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            kv_cache.write(self.layer_idx, meta.slot_mapping, k, v)
        out = None
        for g in meta.groups:
            G, T = g.token_index.shape
            if g.covers_all:
                qg = q.view(G, T, self.num_heads, self.head_dim)
            else:
                qg = q[g.token_index]
            o = None
            if self.decode_attention is not None and kv_cache is not None and T <= PER_TOKEN_ROWS:
                o = self.decode_attention(qg, kv_cache, self.layer_idx, g, self.sliding_window, self.scaling)
            if o is None:
                o = self._sdpa(qg, k, v, g, kv_cache)  # [G, T, heads, d]
            if g.covers_all:
                out = o.reshape(N, -1)
            else:
                if out is None:
                    out = o.new_empty(N, self.num_heads * self.head_dim)  # o: SDPA dtype (bf16 under autocast)
                out[g.token_index.reshape(-1)] = o.reshape(G * T, -1)
        return self.o_proj(out)

    def _sdpa(self, qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g, kv_cache) -> torch.Tensor:
        """PyTorch's SDPA for one row group: keys gathered from the paged cache, or the step's own."""
        G, T = g.token_index.shape
        if kv_cache is not None:
            kg, vg = kv_cache.gather(self.layer_idx, g.gather)  # [G, S, kvh, d]
        elif g.covers_all:
            kg, vg = k.view(G, T, self.num_kv_heads, self.head_dim), v.view(G, T, self.num_kv_heads, self.head_dim)
        else:
            kg, vg = k[g.token_index], v[g.token_index]
        mask = g.masks[self.layer_type]
        return F.scaled_dot_product_attention(
            qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
            scale=self.scaling, enable_gqa=self.num_kv_heads != self.num_heads,
        ).transpose(1, 2)
