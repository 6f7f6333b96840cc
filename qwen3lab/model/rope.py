"""Rotary position embeddings: inverse frequencies for default, linear, llama3 and YaRN scaling.

Owns the maths that turns a ``RopeConfig`` into ``inv_freq`` plus a cos/sin scale, and the
rotate-half (NeoX) application used by Qwen2/Qwen3 and by Llama checkpoints in Hugging Face layout.
Follows ``transformers.modeling_rope_utils`` formula for formula so logits match the reference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RopeConfig


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))


def _yarn(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    factor, base = rope.factor, rope.theta

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = get_mscale(factor, rope.mscale) / get_mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)

    def correction_dim(rotations: float) -> float:
        orig = rope.original_max_position_embeddings
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, float(attention_factor)


def _llama3(rope: RopeConfig, dim: int) -> torch.Tensor:
    inv_freq = _default_inv_freq(rope.theta, dim)
    old_len = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / rope.low_freq_factor, old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Return (inv_freq [dim/2] float32, attention scaling applied to cos and sin)."""
    if rope.rope_type == "yarn":
        return _yarn(rope, dim)
    if rope.rope_type == "llama3":
        return _llama3(rope, dim), 1.0
    inv_freq = _default_inv_freq(rope.theta, dim)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    return inv_freq, 1.0


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for arbitrary position tensors (any shape) in float32, then casts.

    With ``rope.long_only`` it also keeps the unscaled frequencies: tokens of sequences marked long get
    the scaled embedding, the others the plain one (``forward``'s ``long``)."""

    def __init__(self, rope: RopeConfig, head_dim: int):
        super().__init__()
        inv_freq, self.attention_scaling = rope_inv_freq(rope, head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        short = _default_inv_freq(rope.theta, head_dim) if rope.long_only and rope.rope_type != "default" else None
        self.register_buffer("short_inv_freq", short, persistent=False)

    def _table(self, positions, inv_freq, scaling, dtype):
        freqs = positions.to(torch.float32).unsqueeze(-1) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype,
                long: torch.Tensor | bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``long``: with long-only scaling, which tokens (a bool per position, or one for all) belong to
        sequences scaled past the original window; None counts as not long."""
        if self.short_inv_freq is None or long is True:
            return self._table(positions, self.inv_freq, self.attention_scaling, dtype)
        short = self._table(positions, self.short_inv_freq, 1.0, dtype)
        if long is None or long is False or not bool(long.any()):
            return short
        scaled = self._table(positions, self.inv_freq, self.attention_scaling, dtype)
        pick = long.unsqueeze(-1)
        return torch.where(pick, scaled[0], short[0]), torch.where(pick, scaled[1], short[1])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, heads, head_dim]; cos/sin: [..., T, head_dim]."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + rotate_half(x) * sin
