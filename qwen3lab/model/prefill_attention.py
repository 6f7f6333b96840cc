"""Chunked-prefill attention that reads the paged cache in place, on the CPU.

A prefill chunk of T queries at positions p0 .. p0+T-1 attends the chunk's own keys (causally) and
the keys of earlier chunks, which sit in the paged cache. Gathering those into one padded copy and
masking it costs a copy of the whole context per chunk and layer, and a [T, context] mask sends
SDPA down its unfused path (score matrices materialised per head). Instead the keys are attended
in pieces with PyTorch's flash kernel (online softmax, blocked, no score matrix), each piece
returning its log-sum-exp, and the pieces are merged exactly:

  o = sum_i o_i * exp(lse_i - lse),   lse = log sum_i exp(lse_i)

Pieces are runs of consecutive cache slots, read as views of the cache tensor (blocks allocated to
one sequence are mostly consecutive; an int8 cache dequantizes each piece as it is read); runs shorter than ``MIN_RUN`` slots are gathered together
into one small buffer. Windows are applied per piece: the earlier keys split into kept-first
tokens (sinks), a band that only some of the chunk's queries see (masked, at most T keys wide) and
a span every query sees (unmasked), so no mask is ever wider than the chunk; a sliding layer's chunk
goes in pieces of ``SUB`` queries, so its masks stay that narrow.
"""

from __future__ import annotations

import torch

MIN_RUN = 64
SUB = 256  # queries per piece of a sliding layer's chunk


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = False,
           visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [H, T, d]; k, v [L, KV, d] -> (o [H, T, d], lse [H, T]); ``visible`` [T, L] bool."""
    mask = None
    if visible is not None:
        mask = torch.zeros(visible.shape, dtype=q.dtype).masked_fill_(~visible, float("-inf"))
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.unsqueeze(0), k.unsqueeze(0).transpose(1, 2), v.unsqueeze(0).transpose(1, 2), 0.0, causal,
        attn_mask=mask, scale=scale)
    if visible is not None:  # the kernel gives a query that sees no key lse 0, not -inf: weight it out
        return o[0], lse[0].masked_fill(~visible.any(-1), float("-inf"))
    return o[0], lse[0]


class _Merged:
    """The running softmax-weighted sum of the pieces attended so far (fp32)."""

    def __init__(self):
        self.o: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, o: torch.Tensor, lse: torch.Tensor) -> None:
        o = torch.nan_to_num(o.float())  # a query that sees none of a piece's keys: lse -inf, o undefined
        if self.o is None:
            self.o, self.lse = o, lse
            return
        m = torch.maximum(self.lse, lse)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        a, b = (self.lse - m).exp(), (lse - m).exp()
        total = a + b
        self.o = (self.o * a.unsqueeze(-1) + o * b.unsqueeze(-1)) / total.clamp_min(1e-30).unsqueeze(-1)
        self.lse = m + total.log()


def _runs(cache, slots: torch.Tensor, first: int):
    """Pieces of the keys at positions first .. first+len(slots)-1: (k, v, positions) per run of
    consecutive slots of at least MIN_RUN, then the shorter runs together as one gathered piece."""
    n = slots.numel()
    if n == 0:
        return
    cuts = ((slots[1:] - slots[:-1]) != 1).nonzero().flatten().add_(1).tolist()
    short: list[torch.Tensor] = []
    for a, b in zip([0, *cuts], [*cuts, n]):
        if b - a >= MIN_RUN:
            s0 = int(slots[a])
            yield *cache.span(s0, s0 + b - a), torch.arange(first + a, first + b)
        else:
            short.append(torch.arange(a, b))
    if short:
        idx = torch.cat(short)
        flat = slots[idx]
        yield *cache.select(flat), idx + first


def prefill_row(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache, slots: torch.Tensor,
                context_len: int, scale: float, window: int = 0, sinks: int = 0) -> torch.Tensor:
    """One row's chunk: q [T, H, d] at positions context_len-T .. context_len-1; k_new, v_new [T, KV, d]
    its own keys; ``cache`` the layer's pools (``KVLayer``: ``span`` / ``select`` read keys and values);
    ``slots`` the flat cache slots of its keys by position (at least context_len - T);
    ``window`` 0 for full attention. Returns [T, H, d] in q's dtype."""
    T = q.shape[0]
    if window and T > SUB:
        # The band of keys that only some queries see is as wide as the chunk, and a masked flash call is
        # the kernel's slow path: in pieces of SUB queries the band is SUB wide and the rest unmasked. A
        # piece's earlier keys of its own chunk are read from the cache, where the layer wrote them.
        return torch.cat([prefill_row(q[a:a + SUB], k_new[a:a + SUB], v_new[a:a + SUB], cache, slots,
                                      context_len - T + min(a + SUB, T), scale, window, sinks)
                          for a in range(0, T, SUB)])
    p0 = context_len - T
    qh = q.transpose(0, 1)
    qpos = torch.arange(p0, context_len).unsqueeze(1)
    out = _Merged()
    if window == 0 or window >= T:  # every own key a query may see is inside its window
        out.add(*_flash(qh, k_new, v_new, scale, causal=True))
    else:
        kpos = torch.arange(p0, context_len).unsqueeze(0)
        out.add(*_flash(qh, k_new, v_new, scale, visible=(kpos <= qpos) & ((kpos > qpos - window) | (kpos < sinks))))
    if p0 > 0:
        if window == 0:
            spans = [(0, p0, False)]
        else:
            lo = max(0, p0 - window + 1)  # the first query's oldest key
            every = max(lo, min(p0, context_len - window))  # keys from here on: seen by every query
            spans = [(0, min(sinks, lo), False), (lo, every, True), (every, p0, False)]
        for a, b, banded in spans:
            if b <= a:
                continue
            for k, v, pos in _runs(cache, slots[a:b], a):
                visible = ((pos.unsqueeze(0) > qpos - window) | (pos.unsqueeze(0) < sinks)) if banded else None
                out.add(*_flash(qh, k, v, scale, visible=visible))
    return out.o.transpose(0, 1).to(q.dtype)
