"""Grouped-query self-attention with optional QK-norm and per-layer sliding window.

Owns the attention block over a flat token batch: one packed [q; k; v] projection, QK-norm + RoPE,
the cache write, the backend that attends (``model/attention_backend.py``) and the output
projection. Where keys come from (a paged cache or the step's own tokens) and which rows attend
together is described by ``AttentionMetadata``; the cache object itself is passed in by the engine.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention_metadata import AttentionMetadata
from .linear import Linear
from .norm import RMSNorm
from .plan import DEFAULT_PLAN, ModelPlan


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, plan: ModelPlan = DEFAULT_PLAN, prefix: str = "",
                 input_size: int | None = None):
        """``prefix``: the module's Hugging Face name; ``input_size``: the projections' input width (the
        hidden size, or 2 x hidden for an EAGLE3 draft layer that reads [embedding, hidden])."""
        super().__init__()
        self.layer_idx = layer_idx
        self.set_layer_type(config)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        h, q, kv = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_sizes = (q, kv, kv)
        inp = input_size or h
        qkv_names = (f"{prefix}.q_proj", f"{prefix}.k_proj", f"{prefix}.v_proj")
        self.qkv_proj = Linear(inp, self.qkv_sizes, config.qkv_bias,
                               plan.linear(qkv_names, inp, self.qkv_sizes, config.qkv_bias), plan.dtype)
        self.o_proj = Linear(q, h, config.o_bias, plan.linear((f"{prefix}.o_proj",), q, (h,), config.o_bias),
                             plan.dtype)
        if config.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, plan.ops)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, plan.ops)
        else:
            self.q_norm = self.k_norm = None
        self.ops, self.backend = plan.ops, plan.attention

    def set_layer_type(self, config: ModelConfig) -> None:
        """This layer's attention kind and window from ``config`` (at build, or a run-time layout change)."""
        self.layer_type = config.layer_types[self.layer_idx]
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else 0

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                kv_cache=None) -> torch.Tensor:
        """x: [N, hidden] flat tokens -> [N, hidden]."""
        N = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        q = q.reshape(N, self.num_heads, self.head_dim)
        k = k.reshape(N, self.num_kv_heads, self.head_dim)
        v = v.reshape(N, self.num_kv_heads, self.head_dim)
        q, k = self.ops.norm_rope(q, self.q_norm, cos, sin), self.ops.norm_rope(k, self.k_norm, cos, sin)
        meta = meta.for_layer(self.layer_type)
        if kv_cache is not None:
            kv_cache.write(self.layer_idx, meta.slot_mapping, k, v)
        return self.o_proj(self.backend.forward(self, q, k, v, meta, kv_cache))
