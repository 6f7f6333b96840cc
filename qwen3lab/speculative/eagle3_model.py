"""The EAGLE3 draft head (architecture only), in the SpecForge/AngelSlim layout vLLM and SGLang load.

One Llama decoder layer (``midlayer``) whose attention reads ``2 * hidden``: the normed embedding
of a token concatenated with a normed hidden state. The hidden state is either ``fc`` applied to
three target hidden states (first draft step) or the draft's own pre-norm output (later steps).
The head ``lm_head`` covers a reduced draft vocabulary; ``d2t[i]`` maps draft id i to target id
``i + d2t[i]`` and ``t2d`` marks the target ids that are in the draft vocabulary.

Tensor names are the published ones, without a ``model.`` prefix (vLLM's loader maps
``midlayer.`` to its ``layers.0.``): ``fc``, ``midlayer.{hidden_norm,input_layernorm,
post_attention_layernorm}``, ``midlayer.self_attn.{q,k,v,o}_proj``, ``midlayer.mlp.{gate,up,down}_proj``,
``norm``, ``lm_head``, ``d2t``, ``t2d`` and optionally ``embed_tokens`` (else the target's is used).

Forward, as in SpecForge's ``LlamaDecoderLayer`` and vLLM's ``llama_eagle3`` (default
``norm_before_residual = false``)::

    residual = h;  x = cat(input_layernorm(embed), hidden_norm(h))
    h = residual + o_proj(attn(x));  h = h + mlp(post_attention_layernorm(h))   # pre-norm output
    logits = lm_head(norm(h))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..model import AttentionMetadata
from ..model.attention import Attention
from ..model.decoder import MLP
from ..model.linear import Linear
from ..model.norm import RMSNorm
from ..model.plan import DEFAULT_PLAN, ModelPlan
from ..model.rope import RotaryEmbedding


@dataclass(frozen=True)
class Eagle3Config:
    base: ModelConfig  # the draft layer's widths, RoPE and target vocab_size (a one-layer llama config)
    draft_vocab_size: int
    num_aux_layers: int = 3  # target hidden states fused by fc
    aux_layer_ids: tuple[int, ...] | None = None  # explicit target layers (eagle_config), else the default
    norm_before_residual: bool = False

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "<dict>") -> "Eagle3Config":
        cfg = dict(cfg)
        cfg.setdefault("model_type", "llama")
        if cfg["model_type"] != "llama":
            raise ValueError(f"{source}: EAGLE3 heads in the SpecForge/AngelSlim layout are llama layers; "
                             f"model_type {cfg['model_type']!r} (e.g. a q/k-normed qwen3 layer) is not supported")
        if int(cfg.get("num_hidden_layers", 1)) != 1:
            raise ValueError(f"{source}: only one-layer EAGLE3 heads are supported, "
                             f"num_hidden_layers is {cfg['num_hidden_layers']}")
        cfg["num_hidden_layers"] = 1
        base = ModelConfig.from_dict(cfg, source)
        ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        return cls(base, int(cfg.get("draft_vocab_size") or base.vocab_size), len(ids) if ids else 3,
                   tuple(int(i) for i in ids) if ids else None, bool(cfg.get("norm_before_residual", False)))

    def target_layers(self, num_target_layers: int) -> tuple[int, ...]:
        """Outputs of these target layers are fused (EAGLE3 default: low, middle, high)."""
        if self.aux_layer_ids is not None:
            return self.aux_layer_ids
        L = num_target_layers
        # Clamped only so that tiny test targets (fewer than 8 layers) still have three inputs.
        return tuple(max(0, min(L - 1, i)) for i in (1, L // 2 - 1, L - 4))


class Eagle3Layer(nn.Module):
    """``midlayer``: a Llama decoder layer whose q/k/v projections read [embedding, hidden]."""

    def __init__(self, config: ModelConfig, norm_before_residual: bool = False, plan: ModelPlan = DEFAULT_PLAN):
        super().__init__()
        h = config.hidden_size
        self.self_attn = Attention(config, 0, plan, "midlayer.self_attn", input_size=2 * h)
        self.mlp = MLP(config, plan, "midlayer.mlp")
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps, plan.ops)
        self.input_layernorm = RMSNorm(h, config.rms_norm_eps, plan.ops)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps, plan.ops)
        self.norm_before_residual = norm_before_residual

    def attn_input(self, embeds: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention input [.., 2h], residual [.., h])."""
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        return torch.cat([self.input_layernorm(embeds), normed], dim=-1), residual

    def finish(self, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        h = residual + attn_out
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Model(nn.Module):
    def __init__(self, config: Eagle3Config, own_embeddings: bool = False, plan: ModelPlan = DEFAULT_PLAN):
        """``plan``: the layouts and kernels (``ModelPlan.for_device`` for inference; the default trains)."""
        super().__init__()
        self.config = config
        c = config.base
        h, aux, v = c.hidden_size, config.num_aux_layers * c.hidden_size, config.draft_vocab_size
        self.fc = Linear(aux, h, False, plan.linear(("fc",), aux, (h,), False), plan.dtype)
        self.midlayer = Eagle3Layer(c, config.norm_before_residual, plan)
        self.norm = RMSNorm(h, c.rms_norm_eps, plan.ops)
        self.lm_head = Linear(h, v, False, plan.linear(("lm_head",), h, (v,), False), plan.dtype)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size) if own_embeddings else None
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(c.vocab_size, dtype=torch.bool) if config.draft_vocab_size == c.vocab_size
                             else torch.zeros(c.vocab_size, dtype=torch.bool))
        with torch.device("cpu"):  # computed, never loaded
            self.rotary_emb = RotaryEmbedding(c.rope, c.head_dim)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """Target hidden states concatenated in layer order [N, k*h] -> draft hidden [N, h]."""
        return self.fc(aux)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata, kv_cache=None) -> torch.Tensor:
        """Flat rows: token embeddings [N, h] and hidden states [N, h] -> pre-norm outputs [N, h]."""
        x, residual = self.midlayer.attn_input(embeds, hidden)
        cos, sin = self.rotary_emb(meta.positions, x.dtype)
        return self.midlayer.finish(residual, self.midlayer.self_attn(x, cos, sin, meta, kv_cache))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pre-norm hidden [N, h] -> draft-vocabulary logits [N, draft_vocab] float32."""
        return self.lm_head(self.norm(hidden)).float()

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]
