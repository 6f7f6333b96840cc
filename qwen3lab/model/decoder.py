"""The dense decoder shared by Qwen3, Qwen2 and Llama checkpoints (architecture only).

Differences between the three are config flags (QK-norm, q/k/v bias, tied head, RoPE scaling,
sliding layers), so one code path serves all. ``forward`` returns hidden states;
``compute_logits`` applies the head. Scheduling, caching policy and sampling live elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .attention_metadata import AttentionMetadata
from .norm import RMSNorm
from .rope import RotaryEmbedding


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)
        # Optional kernel, set by qwen3lab.kernels.install on the CPU: silu(gate) * up in one pass from the
        # fused projection's output (returns None where it does not apply).
        self.act_mul = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "gate_up_proj" in self._modules:  # fused by model/fuse.py
            gate_up = self.gate_up_proj(x)
            if self.act_mul is not None and (h := self.act_mul(gate_up.reshape(-1, gate_up.shape[-1]))) is not None:
                return self.down_proj(h.view(*gate_up.shape[:-1], -1))
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Holds ``model.*`` weights under their Hugging Face names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Built on the CPU even under a meta-device context: it is computed, never loaded.
        with torch.device("cpu"):
            self.rotary_emb = RotaryEmbedding(config.rope, config.head_dim)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_cache=None,
                output_hidden_layers: tuple[int, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids [N] (flat tokens of all sequences) -> final-normed hidden states [N, hidden].

        ``output_hidden_layers``: also return the outputs of these layers (for draft heads and probes).
        """
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(meta.positions, x.dtype)
        captured = []
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, meta, kv_cache)
            if i in output_hidden_layers:
                captured.append(x)
        x = self.model.norm(x)
        return (x, captured) if output_hidden_layers else x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
