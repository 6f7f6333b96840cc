"""Attention backends: how one layer's queries attend, given the step's keys and the paged cache.

A backend receives a layer's q [N, heads, d], k and v [N, kv_heads, d] for the flat tokens of the
step (already written to the cache by the layer) and returns [N, heads * d]. ``AttentionMetadata``
splits the tokens into row groups of equal shape; ``SdpaAttention`` runs each group through
PyTorch's SDPA over keys gathered from the cache (or the step's own keys without a cache); on the
CPU, prefill chunks (rows of more than ``PER_TOKEN_ROWS`` new tokens) instead read the cache in
place, piece by piece, with the flash kernel (``prefill_attention.py``).
``CpuDecodeAttention`` reads the cache in place for groups of at most ``PER_TOKEN_ROWS`` new tokens
per row (decodes, speculative verification), each token as its own decode row, so a token's
arithmetic is the same whether it is decoded or verified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from .attention_metadata import AttentionMetadata
from .prefill_attention import prefill_row

PER_TOKEN_ROWS = 16


class SdpaAttention:
    name = "sdpa"

    def forward(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                kv_cache=None) -> torch.Tensor:
        N, out = q.shape[0], None
        for g in meta.groups:
            G, T = g.token_index.shape
            qg = q.view(G, T, layer.num_heads, layer.head_dim) if g.covers_all else q[g.token_index]
            o = self.group(layer, qg, k, v, g, kv_cache)  # [G, T, heads, d]
            if g.covers_all:
                out = o.reshape(N, -1)
            else:
                if out is None:
                    out = o.new_empty(N, layer.num_heads * layer.head_dim)  # o: SDPA dtype (bf16 under autocast)
                out[g.token_index.reshape(-1)] = o.reshape(G * T, -1)
        return out

    def group(self, layer, qg, k, v, g, kv_cache) -> torch.Tensor:
        """One row group through SDPA: keys gathered from the paged cache, or the step's own."""
        G, T = g.token_index.shape
        if kv_cache is not None and T > PER_TOKEN_ROWS and qg.device.type == "cpu" and not g.tree and (
                layer.layer_type != "sliding_attention" or g.generated is None):
            return self.prefill(layer, qg, k, v, g, kv_cache)
        if kv_cache is not None:
            kg, vg = kv_cache.gather(layer.layer_idx, g.gather)  # [G, S, kvh, d]
        elif g.covers_all:
            kg = k.view(G, T, layer.num_kv_heads, layer.head_dim)
            vg = v.view(G, T, layer.num_kv_heads, layer.head_dim)
        else:
            kg, vg = k[g.token_index], v[g.token_index]
        mask = g.masks[layer.layer_type]
        return F.scaled_dot_product_attention(
            qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
            scale=layer.scaling, enable_gqa=layer.num_kv_heads != layer.num_heads,
        ).transpose(1, 2)


    @staticmethod
    def prefill(layer, qg, k, v, g, kv_cache) -> torch.Tensor:
        """Prefill chunks, one row at a time, keys read from the cache in place."""
        pools = kv_cache.layer(layer.layer_idx)
        T = qg.shape[1]
        rows = []
        for r in range(qg.shape[0]):
            start = int(g.token_index[r, 0])
            rows.append(prefill_row(qg[r], k[start: start + T], v[start: start + T], pools, g.gather[r],
                                    int(g.context_lens[r]), layer.scaling, layer.sliding_window, g.sinks))
        return torch.stack(rows)


class CpuDecodeAttention(SdpaAttention):
    name = "cpu-paged-decode+sdpa"

    def group(self, layer, qg, k, v, g, kv_cache) -> torch.Tensor:
        G, T = qg.shape[:2]
        if kv_cache is not None and T <= PER_TOKEN_ROWS:
            per_token = not (T == 1 and not g.tree)
            gather, ctx = g.per_token() if per_token else (g.gather, g.context_lens)
            o = kernels.paged_decode_attention(qg.reshape(G * T, layer.num_heads, layer.head_dim),
                                               kv_cache.layer(layer.layer_idx), gather, ctx, layer.scaling,
                                               g.key_starts(layer.layer_type, per_token), g.sinks)
            if o is not None:
                return o.view(G, T, layer.num_heads, layer.head_dim)
        return super().group(layer, qg, k, v, g, kv_cache)


SDPA = SdpaAttention()
