"""Per-step attention metadata for a flat batch of tokens from many sequences.

The model sees one flat token list (no padding): sequence i owns tokens
``[starts[i], starts[i] + new_lens[i])`` at positions ``context_lens[i] - new_lens[i] ...``. With a
paged cache, ``slot_mapping`` says where each token's keys go and ``gather`` rows say where each
sequence's keys are read from. Rows with the same number of new tokens (all decodes; verification
rows of equal width; equal prefill chunks) are attended in one call, keys padded to the longest
context and masked. Masks are built once per step and shared by every layer of the same type.

A row may end in a token tree (speculative decoding with trees, as in SpecInfer / EAGLE-2): its
last slots hold draft tokens that branch, each at the position of its depth and attending the
sequence, its ancestors and itself (``TokenTree``). Slots stay consecutive, so the cache, block
tables and slot mapping do not know about trees; only positions and masks do.

Sliding-window layers see a query's own key and the ``window - 1`` before it, plus the first
``sink_tokens`` keys of the sequence (SWAA's kept-first tokens). With ``full_attention_decode``
(SWAA's FA decode) the window holds for prompt tokens only: a generated token (position at or past
its row's prompt length) attends its whole context on every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenTree:
    """Draft tokens as a tree over a row's last slots.

    Slots ``0 .. prefix-1`` hold the sequence; slot ``prefix + j`` holds node j, whose parent is node
    ``parents[j]`` (-1: the sequence's last token, slot ``prefix - 1``). Parents come before their
    children. Node j sits at position ``prefix - 1 + depth(j)`` and attends slots ``0 .. prefix-1``,
    its ancestors and itself. A chain is the tree with parents (-1, 0, 1, ...).
    """

    prefix: int
    parents: tuple[int, ...]

    def __post_init__(self):
        for j, p in enumerate(self.parents):
            if not -1 <= p < j:
                raise ValueError(f"token tree: node {j} has parent {p}; parents must come before their children")

    def depths(self) -> list[int]:
        d: list[int] = []
        for p in self.parents:
            d.append(1 if p < 0 else d[p] + 1)
        return d

    def path(self, j: int) -> list[int]:
        """Nodes from the root's first child down to node j, inclusive."""
        out = []
        while j >= 0:
            out.append(j)
            j = self.parents[j]
        return out[::-1]

    def keys(self, slot: int) -> list[int]:
        """The slots a token at ``slot`` attends, in position order."""
        if slot < self.prefix:
            return list(range(slot + 1))
        return list(range(self.prefix)) + [self.prefix + a for a in self.path(slot - self.prefix)]

    def position(self, slot: int, depths: list[int]) -> int:
        return slot if slot < self.prefix else self.prefix - 1 + depths[slot - self.prefix]


@dataclass
class RowGroup:
    """Sequences attended together: queries [G, T], keys [G, S]."""

    rows: list[int]
    new_len: int  # T, the same for every row of the group
    key_len: int  # S
    gather: torch.Tensor | None  # [G, S] flat cache indices, None without a cache
    masks: dict[str, torch.Tensor | None]  # layer type -> bool [G, 1, T, S]; None: plain causal
    context_lens: torch.Tensor | None = None  # [G] keys each row attends to (its context length)
    token_index: torch.Tensor | None = None  # [G, T] positions of the group's tokens in the flat batch
    covers_all: bool = False  # the group is the whole batch in order: views instead of gathers
    tree: bool = False  # rows end in token trees: per-token key lists, not plain causal ones
    window: int | None = None  # sliding layers' window
    sinks: int = 0  # first keys every sliding-layer query also sees
    generated: torch.Tensor | None = None  # [G, T] bool, with full_attention_decode: queries past the prompt
    _per_token: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _starts: dict = field(default_factory=dict, repr=False)

    def key_starts(self, layer_type: str, per_token: bool) -> torch.Tensor:
        """First key each query row attends for the decode kernel (rows as ``per_token()`` gives them
        when ``per_token``, else one per row): 0 on full layers, the window's start on sliding ones."""
        key = (layer_type, per_token)
        if key not in self._starts:
            ctx = self.per_token()[1] if per_token else self.context_lens
            if layer_type != "sliding_attention" or not self.window:
                starts = torch.zeros_like(ctx)
            else:
                starts = (ctx - self.window).clamp(min=0)
                if self.generated is not None:
                    gen = self.generated.reshape(-1) if per_token else self.generated[:, -1]
                    starts = torch.where(gen, torch.zeros_like(starts), starts)
            self._starts[key] = starts
        return self._starts[key]

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gather [G*T, S], context lengths [G*T]): each new token as its own one-query row, so that a
        row of T tokens (speculative verification) is attended exactly as T decode steps would be."""
        if self._per_token is None:
            T = self.new_len
            ctx = self.context_lens.repeat_interleave(T) - (T - 1) + torch.arange(T).repeat(len(self.rows))
            self._per_token = (self.gather.repeat_interleave(T, dim=0), ctx)
        return self._per_token


@dataclass
class AttentionMetadata:
    positions: torch.Tensor  # [N]
    starts: list[int]
    new_lens: list[int]
    context_lens: list[int]
    slot_mapping: torch.Tensor | None = None  # [N]
    groups: list[RowGroup] = field(default_factory=list)
    # Long-only rotary scaling: per token, whether its sequence is scaled (or one bool for all; None: no)
    long_rope: torch.Tensor | bool | None = None
    # Sliding layers with a pool of their own (engine/hybrid_blocks.py): the same rows over their block
    # tables (slot mapping, gathers), which those layers read instead.
    sliding: "AttentionMetadata | None" = None

    def for_layer(self, layer_type: str) -> "AttentionMetadata":
        return self.sliding if self.sliding is not None and layer_type == "sliding_attention" else self

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def build(cls, new_lens: list[int], context_lens: list[int], layer_types: tuple[str, ...],
              sliding_window: int | None, block_tables: list[list[int]] | None = None, block_size: int = 16,
              device: torch.device | str = "cpu", trees: list[TokenTree | None] | None = None,
              sink_tokens: int = 0, prompt_lens: list[int] | None = None) -> "AttentionMetadata":
        """``block_tables`` None means no cache: each sequence attends to its own new tokens only.
        ``trees``: per row, None or the token tree its last slots hold (needs a cache).
        ``prompt_lens``: per row, given only with full_attention_decode: queries at or past it see
        their whole context on sliding layers too."""
        trees = trees if trees is not None else [None] * len(new_lens)
        if any(t is not None for t in trees) and block_tables is None:
            raise ValueError("token trees need a KV cache (block tables)")
        starts, pos, slots = [], [], []
        offset = 0
        for n, ctx, tree in zip(new_lens, context_lens, trees):
            starts.append(offset)
            offset += n
            slots.append(torch.arange(ctx - n, ctx))
            if tree is None:
                pos.append(slots[-1])
            else:
                if tree.prefix + len(tree.parents) != ctx:
                    raise ValueError(f"token tree of {len(tree.parents)} nodes after {tree.prefix} slots does not "
                                     f"end a context of {ctx}")
                depths = tree.depths()
                pos.append(torch.tensor([tree.position(s, depths) for s in range(ctx - n, ctx)]))
        positions = torch.cat(pos).to(device)
        slot_mapping = None
        if block_tables is not None:
            slot_mapping = torch.cat([flat_index(bt, s, block_size) for bt, s in zip(block_tables, slots)]).to(device)
        meta = cls(positions, starts, list(new_lens), list(context_lens), slot_mapping)
        kinds = set(layer_types)
        # Same-length rows share one call; one-token rows (decodes) are the common large group. Rows
        # ending in trees group apart: their keys are per-token lists.
        by_len: dict[tuple[int, bool], list[int]] = {}
        for i, n in enumerate(new_lens):
            by_len.setdefault((n, trees[i] is not None), []).append(i)
        for (n, is_tree), group in by_len.items():
            bts = [block_tables[r] for r in group] if block_tables is not None else None
            ctxs = [context_lens[r] for r in group]
            generated = None
            if prompt_lens is not None and "sliding_attention" in kinds:
                qpos = torch.stack([torch.arange(ctx - n, ctx) for ctx in ctxs])
                generated = qpos >= torch.tensor([prompt_lens[r] for r in group]).unsqueeze(1)
                if not generated.any():
                    generated = None
            if is_tree:
                g = _tree_group(group, n, ctxs, [trees[r] for r in group], kinds, sliding_window, bts,
                                block_size, device, sink_tokens, generated)
            else:
                g = _group(group, n, ctxs, kinds, sliding_window, bts, block_size, device, sink_tokens, generated)
            g.window, g.sinks, g.generated = sliding_window, sink_tokens, generated
            g.token_index = (torch.tensor([starts[r] for r in group]).unsqueeze(1) + torch.arange(n)).to(device)
            g.covers_all = group == list(range(len(new_lens))) and all(x == n for x in new_lens)
            meta.groups.append(g)
        return meta


def flat_index(block_table: list[int], slots: torch.Tensor, block_size: int) -> torch.Tensor:
    """A sequence's logical slots (0, 1, ...) -> flat cache indices."""
    bt = torch.tensor(block_table, dtype=torch.long)
    return bt[slots // block_size] * block_size + slots % block_size


def _gather(block_tables, ctx_lens, S, block_size) -> torch.Tensor:
    """[G, S] flat cache indices of each row's keys, padded past its context with its last key."""
    keys = torch.arange(S)
    return torch.stack([flat_index(bt, keys.clamp(max=ctx - 1), block_size) for bt, ctx in zip(block_tables, ctx_lens)])


def _group(rows, n, ctx_lens, kinds, window, block_tables, block_size, device, sinks=0, generated=None) -> RowGroup:
    cached = block_tables is not None
    S = max(ctx_lens) if cached else n
    gather = _gather(block_tables, ctx_lens, S, block_size).to(device) if cached else None
    q = torch.stack([torch.arange(ctx - n, ctx) if cached else torch.arange(n) for ctx in ctx_lens]).unsqueeze(-1)
    k = torch.arange(S).view(1, 1, S)
    causal = k <= q  # [G, T, S]; also hides keys past a shorter row's context
    masks: dict[str, torch.Tensor | None] = {}
    # Queries and keys both start at position 0 in every row: SDPA's own causal path, no mask tensor.
    plain = not cached or all(ctx == n for ctx in ctx_lens)
    masks["full_attention"] = None if plain else causal.unsqueeze(1).to(device)
    if "sliding_attention" in kinds:
        near = (k > q - window) | (k < sinks)
        if generated is not None:
            near = near | generated.unsqueeze(-1)
        masks["sliding_attention"] = (causal & near).unsqueeze(1).to(device)
    return RowGroup(rows, n, S, gather, masks, context_lens=torch.tensor(ctx_lens))


def _tree_group(rows, n, ctx_lens, trees, kinds, window, block_tables, block_size, device, sinks=0,
                generated=None) -> RowGroup:
    """Rows ending in token trees: each token's key list (sequence, ancestors, itself) as a mask for
    SDPA and as per-token gather rows for the decode kernel, whose windows count keys by list index,
    which is the position along a root-to-node path."""
    G, S = len(rows), max(ctx_lens)
    gather = _gather(block_tables, ctx_lens, S, block_size)
    allowed = torch.zeros(G, n, S, dtype=torch.bool)
    qpos = torch.zeros(G, n, dtype=torch.long)
    kpos = torch.zeros(G, S, dtype=torch.long)
    lists = []
    for g, (ctx, tree) in enumerate(zip(ctx_lens, trees)):
        depths = tree.depths()
        kpos[g, :ctx] = torch.tensor([tree.position(s, depths) for s in range(ctx)])
        for t in range(n):
            slot = ctx - n + t
            ks = tree.keys(slot)
            allowed[g, t, ks] = True
            qpos[g, t] = tree.position(slot, depths)
            lists.append(gather[g, ks])
    masks: dict[str, torch.Tensor | None] = {"full_attention": allowed.unsqueeze(1).to(device)}
    if "sliding_attention" in kinds:
        near = (kpos.unsqueeze(1) > qpos.unsqueeze(2) - window) | (kpos.unsqueeze(1) < sinks)
        if generated is not None:
            near = near | generated.unsqueeze(-1)
        masks["sliding_attention"] = (allowed & near).unsqueeze(1).to(device)
    width = max(len(x) for x in lists)
    per_gather = torch.stack([torch.cat([x, x[-1:].expand(width - len(x))]) for x in lists]).to(device)
    per_ctx = torch.tensor([len(x) for x in lists])
    return RowGroup(rows, n, S, gather.to(device), masks, context_lens=torch.tensor(ctx_lens), tree=True,
                    _per_token=(per_gather, per_ctx))
