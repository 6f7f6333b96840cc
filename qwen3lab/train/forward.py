"""The training forward: packed sequences in, log-probabilities of chosen target tokens out.

``TokenLogprobs`` wraps a ``CausalLM`` (so DDP can wrap it in turn) and runs the decoder over the flat
concatenation of several sequences; ``AttentionMetadata`` without a cache makes each sequence attend
causally to itself only, so packing never mixes examples and needs no padding. The head is applied
only at target positions, and there in chunks of at most ``LOGIT_CHUNK`` logits: when the targets
need more than one chunk, each chunk is recomputed in the backward pass, so the float32 [targets,
vocab] logits are never held whole (1.2 GB for 512 targets of Qwen3's 152k vocabulary, with their
log-softmax). Gradient checkpointing recomputes each decoder layer in the backward pass.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from ..model import AttentionMetadata
from ..model.decoder import CausalLM

LOGIT_CHUNK = 1 << 23  # logits per chunk: 170 targets x 49k vocabulary, 55 x 152k (32 MB in float32)
# Up to this sequence length PyTorch's plain attention trains faster on the CPU than its flash kernel,
# whose backward is slow on short sequences, and its score matrix is still small.
MATH_ATTENTION_MAX_LEN = 256


class TokenLogprobs(nn.Module):
    def __init__(self, lm: CausalLM, gradient_checkpointing: bool = False, temperature: float = 1.0):
        super().__init__()
        self.lm = lm
        self.gradient_checkpointing = gradient_checkpointing
        self.temperature = temperature  # score under the distribution that sampled (GRPO rollouts)

    def forward(self, input_ids: torch.Tensor, lens: list[int], target_pos: torch.Tensor,
                target_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [N] (sequences back to back, lengths ``lens``) -> log p(target_ids | prefix) [T].

        ``target_pos[t]`` is the flat position whose next-token distribution scores ``target_ids[t]``.
        """
        lm, cfg = self.lm, self.lm.config
        meta = AttentionMetadata.build(lens, lens, cfg.layer_types, cfg.sliding_window, device=input_ids.device,
                                       sink_tokens=cfg.sink_tokens)
        x = lm.model.embed_tokens(input_ids)
        cos, sin = lm.rotary_emb(meta.positions, x.dtype)
        math = torch.is_grad_enabled() and input_ids.device.type == "cpu" and max(lens) <= MATH_ATTENTION_MAX_LEN
        for layer in lm.model.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(_run_layer, layer, x, cos, sin, meta, math, use_reentrant=False)
            else:
                x = _run_layer(layer, x, cos, sin, meta, math)
        return target_logprobs(lm, x[target_pos], target_ids, self.temperature)


def _run_layer(layer, x, cos, sin, meta, math_attention: bool) -> torch.Tensor:
    # Inside the checkpointed function, so that the recomputation picks the same attention kernel.
    with sdpa_kernel(SDPBackend.MATH) if math_attention else nullcontext():
        return layer(x, cos, sin, meta)


def _chunk_logprobs(lm: CausalLM, hidden: torch.Tensor, target_ids: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    x = lm.model.norm(hidden)  # RMSNorm is per token: normalise only what the head needs
    logits = lm.compute_logits(x)
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, target_ids, reduction="none")


def target_logprobs(lm: CausalLM, hidden: torch.Tensor, target_ids: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """log p(target_ids[t] | hidden[t]) [T] from final-layer hidden states (before the final norm),
    with the logits divided by ``temperature``."""
    rows = max(1, LOGIT_CHUNK // lm.config.vocab_size)
    if len(target_ids) <= rows:
        return _chunk_logprobs(lm, hidden, target_ids, temperature)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    out = []
    for s in range(0, len(target_ids), rows):
        h, t = hidden[s:s + rows], target_ids[s:s + rows]
        out.append(checkpoint(_chunk_logprobs, lm, h, t, temperature, use_reentrant=False) if recompute
                   else _chunk_logprobs(lm, h, t, temperature))
    return torch.cat(out)


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
