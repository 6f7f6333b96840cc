"""A smaller checkpoint with the same tokenizer drafts k tokens (e.g. Qwen3-0.6B for Qwen3-4B).

The draft model keeps its own paged KV cache and, per target sequence, how many tokens it has
computed. Each step it catches up on the tokens the target accepted (one prefill row), then
drafts one token at a time; after verification its computed count is cut back to the accepted
prefix, which is the rollback.

With ``topk`` > 1 it grows a token tree instead (``tree.DraftTree``, EAGLE-2's rule on the draft
model's own log-probabilities): each step feeds the k best newest nodes together as a tree in the
draft's cache. The tree's keys are never kept; the next step feeds the accepted tokens again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.sequence import Sequence, SpecDraft
from ..model import AttentionMetadata, CausalLM, TokenTree
from ..sampling import processed_probs
from .tree import DraftTree, SlotView, draft_pool, tree_shape


@dataclass(eq=False)
class _DraftState:
    tokens: list[int]
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)


class DraftModelDrafter:
    hidden_layers: tuple[int, ...] = ()  # drafts from tokens alone

    def __init__(self, model: CausalLM, num_tokens: int, dtype: torch.dtype, max_model_len: int,
                 max_num_seqs: int, kv_cache_memory_gb: float, device, block_size: int,
                 topk: int = 1, num_steps: int | None = None):
        self.model, self.num_tokens, self.device = model, num_tokens, torch.device(device)
        self.topk, self.num_steps = tree_shape(num_tokens, topk, num_steps)
        self.cache, self.blocks = draft_pool(model.config, dtype, device, block_size, kv_cache_memory_gb,
                                             max_num_seqs, max_model_len, num_tokens, topk, self.num_steps)
        self.states: dict[int, _DraftState] = {}

    @torch.inference_mode()
    def _forward(self, states, new: list[list[int]], trees: list[TokenTree] | None = None,
                 all_rows: bool = False) -> torch.Tensor:
        """Feed new tokens per state; return logits at each row's last new token [B, vocab] (at every
        new token with ``all_rows``)."""
        cfg = self.model.config
        lens = [len(n) for n in new]
        ctx = [s.num_computed + n for s, n in zip(states, lens)]
        for s, c in zip(states, ctx):
            if not self.blocks.allocate(s, c):
                raise RuntimeError("draft model KV cache is full: raise speculative kv_cache_memory_gb")
        meta = AttentionMetadata.build(lens, ctx, cfg.layer_types, cfg.sliding_window,
                                       [s.block_table for s in states], self.cache.block_size, self.device, trees)
        ids = torch.tensor([t for n in new for t in n], device=self.device)
        hidden = self.model(ids, meta, self.cache)
        for s, c in zip(states, ctx):
            s.num_computed = c
        if not all_rows:
            hidden = hidden[torch.tensor([st + n - 1 for st, n in zip(meta.starts, lens)], device=self.device)]
        return self.model.compute_logits(hidden).cpu()

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> None:
        states = []
        for seq in seqs:
            st = self.states.setdefault(seq.seq_id, _DraftState([]))
            st.tokens = list(seq.all_token_ids)
            st.num_computed = min(st.num_computed, len(st.tokens) - 1)
            states.append(st)
        new = [st.tokens[st.num_computed:] for st in states]
        if self.topk > 1:
            self._propose_tree(seqs, budgets, states, new)
            return
        drafts: list[list[int]] = [[] for _ in seqs]
        probs: list[list[torch.Tensor]] = [[] for _ in seqs]
        active = list(range(len(seqs)))
        for step in range(max(budgets, default=0)):
            logits = self._forward([states[i] for i in active], [new[i] for i in active])
            # The draft proposes from the same warped distribution the target samples from.
            p = processed_probs(logits, [seqs[i].params for i in active])
            nxt = []
            for row, i in enumerate(active):
                if seqs[i].params.temperature == 0:
                    tok = int(p[row].argmax())
                else:
                    tok = int(torch.multinomial(p[row], 1, generator=seqs[i].generator).item())
                drafts[i].append(tok)
                probs[i].append(p[row])
                states[i].tokens.append(tok)
                if len(drafts[i]) < budgets[i]:
                    nxt.append(i)
                    new[i] = [tok]
            active = nxt
            if not active:
                break
        for seq, d, pr in zip(seqs, drafts, probs):
            seq.draft = SpecDraft(d, torch.stack(pr) if pr and seq.params.temperature != 0 else None)

    @torch.inference_mode()
    def _propose_tree(self, seqs: list[Sequence], budgets: list[int], states: list[_DraftState],
                      new: list[list[int]]) -> None:
        logp = torch.log_softmax(self._forward(states, new), dim=-1)  # catch up: every real token computed
        prefix = [st.num_computed for st in states]
        trees = [DraftTree(self.topk) for _ in seqs]
        for b, t in enumerate(trees):
            t.add_children(-1, logp[b])
        for _ in range(1, min(self.num_steps, max(budgets))):
            feeds = [t.feed() for t in trees]
            views = [SlotView(st, p + len(t.fed) - len(f)) for st, p, t, f in zip(states, prefix, trees, feeds)]
            shapes = [TokenTree(p, t.fed_parents()) for p, t in zip(prefix, trees)]
            logp = torch.log_softmax(self._forward(views, [[t.tokens[c] for c in f] for t, f in zip(trees, feeds)],
                                                   shapes, all_rows=True), dim=-1)
            row = 0
            for t, f in zip(trees, feeds):
                for c in f:
                    t.add_children(c, logp[row])
                    row += 1
        for seq, st, p, t, budget in zip(seqs, states, prefix, trees, budgets):
            st.num_computed = p  # the tree's keys are not kept
            tokens, parents = t.select(budget)
            seq.draft = SpecDraft(tokens, parents=parents)

    def observe(self, seqs, num_new_tokens, starts, hidden) -> None:
        pass

    def on_verified(self, seq: Sequence, num_accepted: int, path: list[int] | None = None) -> None:
        st = self.states.get(seq.seq_id)
        if st is not None:  # keep the keys of the accepted prefix only
            st.num_computed = min(st.num_computed, seq.num_tokens - 1)

    def release(self, seq: Sequence) -> None:
        st = self.states.pop(seq.seq_id, None)
        if st is not None:
            self.blocks.release(st)


