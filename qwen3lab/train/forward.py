"""The training forward: packed sequences in, log-probabilities of chosen target tokens out.

``TokenLogprobs`` wraps a ``CausalLM`` (so DDP can wrap it in turn) and runs the decoder over the flat
concatenation of several sequences; ``AttentionMetadata`` without a cache makes each sequence attend
causally to itself only, so packing never mixes examples and needs no padding. The head is applied
only at target positions: the [tokens, vocab] float32 logits of whole sequences are never built.
Gradient checkpointing recomputes each decoder layer in the backward pass (torch.utils.checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..model import AttentionMetadata
from ..model.decoder import CausalLM


class TokenLogprobs(nn.Module):
    def __init__(self, lm: CausalLM, gradient_checkpointing: bool = False):
        super().__init__()
        self.lm = lm
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, input_ids: torch.Tensor, lens: list[int], target_pos: torch.Tensor,
                target_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [N] (sequences back to back, lengths ``lens``) -> log p(target_ids | prefix) [T].

        ``target_pos[t]`` is the flat position whose next-token distribution scores ``target_ids[t]``.
        """
        lm, cfg = self.lm, self.lm.config
        meta = AttentionMetadata.build(lens, lens, cfg.layer_types, cfg.sliding_window, device=input_ids.device)
        x = lm.model.embed_tokens(input_ids)
        cos, sin = lm.rotary_emb(meta.positions, x.dtype)
        for layer in lm.model.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, meta, use_reentrant=False)
            else:
                x = layer(x, cos, sin, meta)
        x = lm.model.norm(x[target_pos])  # RMSNorm is per token: normalise only what the head needs
        return -F.cross_entropy(lm.compute_logits(x), target_ids, reduction="none")


def pack_batch(seqs: list[list[int]], targets: list[list[bool]], device) -> tuple:
    """Flat inputs for ``TokenLogprobs`` from sequences and per-token "is trained" flags.

    Token j of a sequence is a target when its flag is set and j > 0 (it is predicted from position j-1).
    """
    flat, pos, tgt, lens, offset = [], [], [], [], 0
    for ids, flags in zip(seqs, targets):
        flat.extend(ids)
        lens.append(len(ids))
        for j in range(1, len(ids)):
            if flags[j]:
                pos.append(offset + j - 1)
                tgt.append(ids[j])
        offset += len(ids)
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return as_long(flat), lens, as_long(pos), as_long(tgt)
