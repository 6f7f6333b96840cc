"""The dense decoder shared by Qwen3, Qwen2 and Llama checkpoints (architecture only).

Differences between the three are config flags (QK-norm, q/k/v bias, tied head, RoPE scaling,
sliding layers), so one code path serves all. ``forward`` returns hidden states;
``compute_logits`` applies the head. Scheduling, caching policy and sampling live elsewhere.

q/k/v and gate/up are packed projections from construction (``model/packed.py`` maps the
checkpoint's separate tensors onto their parts).
How each layer computes (weight layouts, kernels, attention backend) is the ``ModelPlan``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .attention_metadata import AttentionMetadata
from .linear import Linear
from .norm import RMSNorm
from .plan import DEFAULT_PLAN, ModelPlan
from .rope import RotaryEmbedding

class MLP(nn.Module):
    def __init__(self, config: ModelConfig, plan: ModelPlan = DEFAULT_PLAN, prefix: str = ""):
        super().__init__()
        h, i, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        names = (f"{prefix}.gate_proj", f"{prefix}.up_proj")
        self.gate_up_proj = Linear(h, (i, i), b, plan.linear(names, h, (i, i), b), plan.dtype)
        self.down_proj = Linear(i, h, b, plan.linear((f"{prefix}.down_proj",), i, (h,), b), plan.dtype)
        self.ops = plan.ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, plan: ModelPlan = DEFAULT_PLAN, prefix: str = ""):
        super().__init__()
        self.self_attn = Attention(config, layer_idx, plan, f"{prefix}.self_attn")
        self.mlp = MLP(config, plan, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, plan.ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, plan.ops)

    def forward(self, x, cos, sin, meta: AttentionMetadata, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Holds ``model.*`` weights under their Hugging Face names (packed projections excepted)."""

    def __init__(self, config: ModelConfig, plan: ModelPlan = DEFAULT_PLAN):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, plan, f"model.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, plan.ops)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig, plan: ModelPlan = DEFAULT_PLAN):
        super().__init__()
        self.config, self.plan = config, plan
        self.model = DecoderModel(config, plan)
        h, v = config.hidden_size, config.vocab_size
        self.lm_head = Linear(h, v, False, plan.linear(("lm_head",), h, (v,), False), plan.dtype)
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
        cos, sin = self.rotary_emb(meta.positions, x.dtype, meta.long_rope)
        captured = []
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, meta, kv_cache)
            if i in output_hidden_layers:
                captured.append(x)
        x = self.model.norm(x)
        return (x, captured) if output_hidden_layers else x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
