"""EAGLE3 drafting: a one-layer head over the target's own hidden states proposes a chain of k tokens.

How a step goes (as vLLM's EAGLE proposer does it for chains):
- ``observe`` (called by the engine after every target forward, before verification) fuses the
  outputs of target layers (1, L/2-1, L-4) of every fed token with ``fc`` and keeps them per
  sequence, by position.
- ``propose``: draft row t pairs the fused feature of position t with the embedding of token t+1
  and sits at position t of the draft's own paged KV cache. The first draft step feeds every
  position the target has verified since the last step (the accepted drafts and the bonus token's
  predecessor); its last row predicts the next token. Each later step feeds the token just drafted
  with the draft's own pre-norm output as the hidden state, one position further on.
- Rollback: draft KV written from the draft's own hidden states is never kept; the computed count
  only covers rows built from the target's features, so the next step overwrites the rest.

Token trees (``topk`` > 1, EAGLE-2's dynamic tree as SGLang runs it): the root row's top-k tokens
are the first level; at each of ``num_steps - 1`` further steps the k best newest nodes by
cumulative draft log-probability are fed together (each at the position of its depth, attending
the sequence and its own ancestors in the draft's cache) and each proposes its top-k children.
The ``num_tokens`` best nodes of all levels form the tree the target verifies (a node never scores
above its parent, so the best nodes include their ancestors). Tree drafts are deterministic: the
target verifies them with the one-hot proposal rule, so sampling stays exact.

``draft.probs`` are the draft's warped distributions over the target vocabulary (draft-vocab logits
scattered through ``d2t``, other ids -inf), so rejection sampling stays exact; greedy drafts pass None.

Limits: with prefix-cache hits the target never feeds the cached prompt tokens, so their features
do not exist; those draft rows get a zero feature (acceptance may drop a little, output does not).
Only the SpecForge/AngelSlim layout is supported. DeepSeek's ``eagle3_qwen3_4b_ttt7`` would need
fc over five target layers, q/k RMSNorm in the draft attention and a full-vocabulary head (no
d2t); its tensor names and layer choice are not documented in any public code we could find, so it
is refused on load (model_type other than llama) rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.config import EngineConfig
from ..engine.sequence import Sequence, SpecDraft
from ..model import AttentionMetadata, TokenTree
from ..sampling import processed_probs
from .eagle3_io import load_eagle3
from .config import SpeculativeConfig
from .eagle3_model import Eagle3Model
from .tree import DraftTree, SlotView, draft_pool, tree_shape


@dataclass(eq=False)
class _State:
    num_computed: int = 0  # draft KV positions built from target features and kept across steps
    block_table: list[int] = field(default_factory=list)
    feats: torch.Tensor | None = None  # fused features for positions num_computed, num_computed+1, ...


class Eagle3Drafter:
    def __init__(self, model: Eagle3Model, target, num_tokens: int, max_model_len: int, max_num_seqs: int,
                 dtype: torch.dtype, device, kv_cache_memory_gb: float, block_size: int,
                 topk: int = 1, num_steps: int | None = None):
        self.model, self.num_tokens, self.device = model, num_tokens, torch.device(device)
        self.topk, self.num_steps = tree_shape(num_tokens, topk, num_steps)
        tcfg, base = target.config, model.config.base
        if base.hidden_size != tcfg.hidden_size:
            raise ValueError(f"EAGLE3 draft hidden_size {base.hidden_size} differs from the target's "
                             f"{tcfg.hidden_size}: the draft was trained for another model")
        if base.vocab_size != tcfg.vocab_size:
            raise ValueError(f"EAGLE3 draft vocab_size {base.vocab_size} differs from the target's {tcfg.vocab_size}")
        layers = model.config.target_layers(tcfg.num_hidden_layers)
        if max(layers) >= tcfg.num_hidden_layers:
            raise ValueError(f"EAGLE3 draft reads target layers {layers}, the target has {tcfg.num_hidden_layers}")
        # The engine captures each layer once, in layer order; fc wants them in the draft's order.
        self.hidden_layers = tuple(sorted(set(layers)))
        self._aux_order = [self.hidden_layers.index(i) for i in layers]
        self.embed = model.embed_tokens if model.embed_tokens is not None else target.model.embed_tokens
        self.cache, self.blocks = draft_pool(base, dtype, device, block_size, kv_cache_memory_gb, max_num_seqs,
                                             max_model_len, num_tokens, topk, self.num_steps)
        self.states: dict[int, _State] = {}
        self.target_ids = model.draft_to_target(torch.arange(model.config.draft_vocab_size, device=model.d2t.device))

    @classmethod
    def from_spec(cls, spec: SpeculativeConfig, target, engine: EngineConfig, dtype, device) -> "Eagle3Drafter":
        model = load_eagle3(spec.model, dtype, device)
        return cls(model, target, spec.num_tokens, engine.context_len(target.config.max_position_embeddings),
                   engine.max_num_seqs, dtype, device, spec.kv_cache_memory_gb, engine.block_size, topk=spec.topk,
                   num_steps=spec.num_steps)

    @torch.inference_mode()
    def observe(self, seqs: list[Sequence], num_new_tokens: list[int], starts: list[int],
                hidden: list[torch.Tensor]) -> None:
        aux = torch.cat([hidden[i] for i in self._aux_order], dim=-1)
        fused = self.model.fuse(aux.to(self.model.fc.weight.dtype))
        for seq, n, s0 in zip(seqs, num_new_tokens, starts):
            st = self.states.setdefault(seq.seq_id, _State())
            p0 = seq.num_computed  # position of the first fed token
            if p0 < st.num_computed:  # the target recomputes (preemption): keep only what precedes
                st.num_computed, st.feats = p0, None
            have = st.num_computed + (0 if st.feats is None else len(st.feats))
            old = st.feats if st.feats is not None else fused.new_zeros(0, fused.shape[1])
            if have > p0:  # features of rejected drafts from the previous step
                old = old[: p0 - st.num_computed]
            elif have < p0:  # prefix-cache hit: those tokens were never fed to the target
                old = torch.cat([old, fused.new_zeros(p0 - have, fused.shape[1])])
            st.feats = torch.cat([old, fused[s0: s0 + n]])

    @torch.inference_mode()
    def _forward(self, states, tokens: list[list[int]], hidden: torch.Tensor, lens: list[int],
                 trees: list[TokenTree] | None = None, all_rows: bool = False) -> torch.Tensor:
        """Feed rows (token ids, hidden [sum(lens), h]) per state; return pre-norm outputs of each last
        row (every row with ``all_rows``)."""
        ctx = [s.num_computed + n for s, n in zip(states, lens)]
        for s, c in zip(states, ctx):
            if not self.blocks.allocate(s, c):
                raise RuntimeError("EAGLE3 draft KV cache is full: raise speculative kv_cache_memory_gb")
        base = self.model.config.base
        meta = AttentionMetadata.build(lens, ctx, base.layer_types, base.sliding_window,
                                       [s.block_table for s in states], self.cache.block_size, self.device, trees)
        ids = torch.tensor([t for row in tokens for t in row], device=self.device)
        out = self.model(self.embed(ids).to(hidden.dtype), hidden, meta, self.cache)
        if all_rows:
            return out
        last = torch.tensor([st + n - 1 for st, n in zip(meta.starts, lens)], device=self.device)
        return out[last]

    def _pick(self, seqs: list[Sequence], h: torch.Tensor) -> tuple[list[int], list[torch.Tensor | None]]:
        logits = self.model.compute_logits(h)
        if all(s.params.temperature == 0 for s in seqs):
            return self.target_ids[logits.argmax(-1)].tolist(), [None] * len(seqs)
        full = logits.new_full((logits.shape[0], self.model.config.base.vocab_size), float("-inf"))
        full[:, self.target_ids] = logits
        # The draft proposes from the same warped distribution the target samples from.
        p = processed_probs(full.cpu(), [s.params for s in seqs])
        toks = [int(p[r].argmax()) if s.params.temperature == 0
                else int(torch.multinomial(p[r], 1, generator=s.generator).item()) for r, s in enumerate(seqs)]
        return toks, [p[r] for r in range(len(seqs))]

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], budgets: list[int]) -> None:
        states, tokens, feats, lens = [], [], [], []
        for seq in seqs:
            st = self.states.setdefault(seq.seq_id, _State())
            ids = seq.all_token_ids
            n = len(ids) - 1 - st.num_computed  # rows: positions num_computed .. T-2
            f = st.feats if st.feats is not None else self.cache.k[0].new_zeros(0, self.model.config.base.hidden_size)
            if len(f) < n:  # should not happen; a zero feature keeps drafting lossless anyway
                f = torch.cat([f, f.new_zeros(n - len(f), f.shape[1])])
            states.append(st)
            tokens.append(ids[st.num_computed + 1:])
            feats.append(f[:n])
            lens.append(n)
        h = self._forward(states, tokens, torch.cat(feats), lens)
        for st, n, f in zip(states, lens, feats):
            # The last row is left uncounted (and its feature kept): it is fed again next step, so a
            # step always has a row even when the target made no progress in between.
            st.num_computed += n - 1
            st.feats = f[n - 1:]
        if self.topk > 1:
            self._propose_tree(seqs, budgets, states, h)
            return
        drafts: list[list[int]] = [[] for _ in seqs]
        probs: list[list[torch.Tensor | None]] = [[] for _ in seqs]
        active = list(range(len(seqs)))
        for step in range(max(budgets, default=0)):
            toks, ps = self._pick([seqs[i] for i in active], h)
            nxt = []
            for row, i in enumerate(active):
                drafts[i].append(toks[row])
                probs[i].append(ps[row])
                if len(drafts[i]) < budgets[i]:
                    nxt.append(row)
            if not nxt:
                break
            active = [active[r] for r in nxt]
            # Chain step: the drafted token with the draft's own hidden state, one position on. Its KV
            # lands past num_computed, so it is overwritten next step instead of rolled back.
            chain = [SlotView(states[i], states[i].num_computed + step + 1) for i in active]
            h = self._forward(chain, [[drafts[i][-1]] for i in active], h[nxt], [1] * len(active))
        for seq, d, pr in zip(seqs, drafts, probs):
            seq.draft = SpecDraft(d, torch.stack(pr) if pr and pr[0] is not None else None)

    def _propose_tree(self, seqs: list[Sequence], budgets: list[int], states: list[_State], h: torch.Tensor) -> None:
        """EAGLE-2 dynamic tree from the root outputs h [B, hidden]; sets each sequence's draft tokens and parents.
        A fed candidate's hidden input is the draft output it was predicted from."""
        trees = [DraftTree(self.topk) for _ in seqs]
        logp = torch.log_softmax(self.model.compute_logits(h), dim=-1)
        for b, t in enumerate(trees):
            t.add_children(-1, logp[b], self.target_ids, h[b])
        for _ in range(1, min(self.num_steps, max(budgets))):
            feeds = [t.feed() for t in trees]
            # Each sequence's fed tree continues right after its computed rows (the last one is the root).
            views = [SlotView(st, st.num_computed + 1 + len(t.fed) - len(f)) for st, t, f in zip(states, trees, feeds)]
            shapes = [TokenTree(st.num_computed + 1, t.fed_parents()) for st, t in zip(states, trees)]
            hidden = torch.stack([t.source[c] for t, f in zip(trees, feeds) for c in f])
            outs = self._forward(views, [[t.tokens[c] for c in f] for t, f in zip(trees, feeds)], hidden,
                                 [len(f) for f in feeds], shapes, all_rows=True)
            logp = torch.log_softmax(self.model.compute_logits(outs), dim=-1)
            row = 0
            for t, f in zip(trees, feeds):
                for c in f:
                    t.add_children(c, logp[row], self.target_ids, outs[row])
                    row += 1
        for seq, t, budget in zip(seqs, trees, budgets):
            tokens, parents = t.select(budget)
            seq.draft = SpecDraft(tokens, parents=parents)

    def on_verified(self, seq: Sequence, num_accepted: int, path: list[int] | None = None) -> None:
        """Draft KV past num_computed is stale by construction and rejected features are trimmed in
        observe; an accepted tree path's features are moved to follow the sequence, as its keys were."""
        st = self.states.get(seq.seq_id)
        if not path or path == list(range(len(path))) or st is None or st.feats is None:
            return
        base = seq.num_tokens - len(path) - 1 - st.num_computed  # feature of the first tree node
        if base < 1 or base + max(path) >= len(st.feats):
            return  # features were not kept for this step (preemption): zeros later, still lossless
        st.feats = torch.cat([st.feats[:base], st.feats[base + torch.tensor(path, device=st.feats.device)]])

    def release(self, seq: Sequence) -> None:
        st = self.states.pop(seq.seq_id, None)
        if st is not None:
            self.blocks.release(st)

