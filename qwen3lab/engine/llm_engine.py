"""The engine: requests in, token/text deltas out, one scheduler step at a time.

Owns request bookkeeping (n samples, per-sequence RNG) and the step: draft -> schedule -> run the
model -> sample or verify each row that reached its end. Text and stop conditions are
``output_processor.py``'s, the speculative bookkeeping ``speculation.py``'s. ``LLM`` drives the
engine to completion offline; the server drives the same ``step`` from its event loop.
"""

from __future__ import annotations

import itertools
import logging

import torch

from ..config import GenerationDefaults
from ..sampling import SamplingParams, sample
from ..sampling.logprobs import logprob_entry
from ..speculative.drafter import Drafter
from ..tokenizer.incremental import IncrementalDetokenizer
from .block_manager import BlockManager
from .config import EngineConfig
from .hybrid_blocks import HybridBlockManager
from .kv_cache import PagedKVCache, bytes_per_block, pool_num_blocks
from .model_runner import ModelRunner, StepOutput
from .output_processor import append_token
from .outputs import CompletionOutput, RequestOutput, StreamDelta
from .scheduler import ScheduledBatch, Scheduler
from .sequence import Sequence
from .speculation import accept, draft_budgets, move_path
from .stats import EngineStats

log = logging.getLogger("qwen3lab")

THINK_END = "</think>"
# What the Qwen team appends to stop a thought early (Qwen3 model card, "thinking budget").
EARLY_STOP = "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly now."


class LLMEngine:
    def __init__(self, model, tokenizer, generation: GenerationDefaults, config: EngineConfig,
                 dtype: torch.dtype, device="cpu", drafter: Drafter | None = None):
        self.tokenizer, self.generation, self.config = tokenizer, generation, config
        cfg = model.config
        self.max_model_len = config.context_len(cfg.max_position_embeddings)
        self.dtype, self.device = dtype, device
        self.build_cache(cfg)
        self.runner = ModelRunner(model, self.cache, device)
        self.drafter = drafter
        self.spec_stats = {"steps": 0, "drafted": 0, "accepted": 0}  # totals, for metrics
        eos = set(generation.eos_token_ids) | set(cfg.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = eos
        from ..rope_scaling import long_window

        self.long_window = long_window(cfg)  # long-only rotary scaling: sequences past it run scaled
        self.think_end = tokenizer.token_to_id(THINK_END) if hasattr(tokenizer, "token_to_id") else None
        self._closers: dict[bool, list[int]] = {}
        self.requests: dict[str, list[Sequence]] = {}
        self._prompts: dict[str, str | None] = {}
        self._ids = itertools.count()

    def build_cache(self, cfg) -> None:
        """The KV pools, block manager and scheduler for ``cfg``'s layer types (again after a layout
        change). Sliding layers get a pool of their own, sized for every sequence's window, when that
        saves memory (``hybrid_blocks.py``); the full layers' pool takes the rest of the budget."""
        config, bs = self.config, self.config.block_size
        sliding = cfg.layer_types.count("sliding_attention")
        window = cfg.sliding_window or 0
        # Blocks one sequence's sliding layers hold at most: sinks, the window, one step's tokens.
        per_seq = -(-(cfg.sink_tokens + window + config.max_num_batched_tokens) // bs) + 2
        split = (0 < sliding < cfg.num_hidden_layers and window and not cfg.full_attention_decode
                 and per_seq * bs < self.max_model_len)
        sliding_blocks = None
        budget = config.kv_cache_memory_gb
        if split:
            per_layer = bytes_per_block(cfg, bs, self.dtype, config.kv_cache_dtype) / cfg.num_hidden_layers
            # At most half the budget: more concurrent windows than that wait for blocks (or preempt).
            sliding_blocks = 1 + min(config.max_num_seqs * per_seq,
                                     max(per_seq, int(budget * 2**30 / 2 // (per_layer * sliding))))
            budget -= sliding_blocks * per_layer * sliding / 2**30
            full_layers = cfg.num_hidden_layers - sliding
            budget_blocks = int(budget * 2**30 // (per_layer * full_layers))
            num_blocks = max(1, min(budget_blocks, -(-config.max_num_seqs * self.max_model_len // bs)))
        else:
            num_blocks = pool_num_blocks(cfg, bs, self.dtype, budget, config.max_num_seqs, self.max_model_len,
                                         config.kv_cache_dtype)
        if num_blocks * bs < self.max_model_len:
            log.warning("KV cache of %.1f GiB holds %d tokens: max_model_len lowered from %d",
                        config.kv_cache_memory_gb, num_blocks * bs, self.max_model_len)
            self.max_model_len = num_blocks * bs
        self.cache = PagedKVCache(cfg, num_blocks, bs, self.dtype, self.device, config.kv_cache_dtype, sliding_blocks)
        if split:
            self.blocks = HybridBlockManager(num_blocks, sliding_blocks, bs, window, cfg.sink_tokens,
                                             config.enable_prefix_caching)
            # Blocks nothing can reuse go back to the OS: finished sequences', and sliding ones out of window.
            self.blocks.set_discard(self.cache.discard, lambda b: self.cache.discard(b, 1))
        else:
            self.blocks = BlockManager(num_blocks, bs, config.enable_prefix_caching)
            self.blocks.on_discard = self.cache.discard  # finished sequences' KV memory goes back to the OS
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        if hasattr(self, "runner"):
            self.runner.cache = self.cache

    def kv_bytes_in_use(self) -> int:
        """Bytes of the KV blocks sequences (or the prefix cache) hold now, over both pools."""
        b, cache = self.blocks, self.cache
        if isinstance(b, HybridBlockManager):
            return ((b.full.capacity - b.full.num_free) * cache.block_bytes(0)
                    + (b.sliding.capacity - b.sliding.num_free) * cache.block_bytes(1))
        return (b.capacity - b.num_free) * cache.block_bytes(0)

    def new_blocks(self):
        """A block manager of this engine's kind over its pools, without prefix caching, for scoring
        outside the scheduler (``LLM.logits``, benchmarks); the engine must be idle."""
        b = self.blocks
        if isinstance(b, HybridBlockManager):
            return HybridBlockManager(b.full.num_blocks, b.sliding.num_blocks, b.block_size, b.window, b.sinks, False)
        return BlockManager(b.num_blocks, b.block_size, enable_prefix_caching=False)

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    prompt: str | None = None, constraint_factory=None, adapter: str | None = None) -> str:
        """Queue a request (n sequences); ``constraint_factory()`` makes one decoding constraint per sample;
        ``adapter``: the name of a LoRA adapter loaded with ``LLM(lora_adapters=...)``, None for the base model."""
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("prompt is empty: give at least one token")
        if n >= self.max_model_len:
            raise ValueError(f"prompt has {n} tokens, which does not leave room for one more in the context "
                             f"window of {self.max_model_len} tokens (max_model_len / max_position_embeddings); "
                             "shorten the prompt")
        vocab = self.runner.config.vocab_size
        if max(prompt_token_ids) >= vocab or min(prompt_token_ids) < 0:
            raise ValueError(f"prompt token ids must be in [0, {vocab}) for this model")
        slot = self.adapter_slot(adapter)
        if params.thinking_budget is not None and self.think_end is None:
            raise ValueError(f"thinking_budget needs a model that thinks: this tokenizer has no {THINK_END} token")
        params = params.resolve(self.generation)
        request_id = request_id or f"req-{next(self._ids)}"
        room = self.max_model_len - n
        budget = room if params.max_tokens is None else min(params.max_tokens, room)
        seqs = []
        for i in range(params.n):
            s = Sequence(request_id, i, list(prompt_token_ids), params, budget, lora_slot=slot,
                         cache_salt=f"lora:{adapter}".encode() if slot else None)
            s.generator = torch.Generator()
            # Unseeded requests draw their seed from the global RNG, so torch.manual_seed still governs them.
            s.generator.manual_seed(params.seed + i if params.seed is not None
                                    else int(torch.randint(0, 2**62, (1,)).item()))
            s.detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=params.skip_special_tokens)
            s.constraint = constraint_factory() if constraint_factory is not None else None
            if self.long_window is not None and n > self.long_window:
                self._scale(s)
            seqs.append(s)
            self.scheduler.add(s)
        self.requests[request_id] = seqs
        self._prompts[request_id] = prompt
        return request_id

    def adapter_slot(self, adapter: str | None) -> int:
        """The LoRA slot of an adapter name (0 for None, the base model); a ValueError for unknown names."""
        if adapter is None:
            return 0
        if self.runner.lora_bank is None:
            raise ValueError(f"adapter {adapter!r} requested, but no LoRA adapters are loaded "
                             "(LLM(..., lora_adapters={name: folder}) or `qwen3lab serve --lora-modules NAME=DIR`)")
        return self.runner.lora_bank.slot(adapter)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def is_finished(self, request_id: str) -> bool:
        return all(s.is_finished for s in self.requests[request_id])

    def abort(self, request_id: str) -> None:
        for s in self.requests.get(request_id, []):
            if not s.is_finished:
                s.finish("abort")
                self._release(s)

    def _release(self, seq: Sequence) -> None:
        self.scheduler.release(seq)
        if self.drafter is not None:
            self.drafter.release(seq)

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[StreamDelta]:
        """Draft, schedule, run the model, then update every row that reached its end."""
        if self.drafter is not None:
            self._draft()
        if self.long_window is not None:
            self._scale_crossing()
        batch = self.scheduler.schedule()
        if batch is None:
            if self.scheduler.has_unfinished():
                raise RuntimeError("scheduler made no progress with requests pending (KV pool too small?)")
            return []
        out = self.runner.run(batch, self.drafter.hidden_layers if self.drafter is not None else ())
        if out.hidden:  # feature-level drafters (EAGLE3) see the target's hidden states of every fed token
            self.drafter.observe(batch.seqs, batch.num_new_tokens, out.hidden_starts, out.hidden)
        self.scheduler.step_done(batch)
        return self._update(batch, out)

    def _scale(self, s: Sequence) -> None:
        """Mark a sequence long (scaled rotary embedding); its cached blocks are keyed apart."""
        s.long_rope = True
        s.cache_salt = (s.cache_salt or b"") + b"|rope:long"

    def _scale_crossing(self) -> None:
        """Sequences about to feed a position past the original window restart scaled: recomputing keeps
        every key of a sequence under one rotary embedding."""
        for s in list(self.scheduler.running):
            if not s.long_rope and s.num_tokens + len(s.draft.tokens) > self.long_window:
                self._scale(s)
                self.scheduler.preempt(s)

    def _draft(self) -> None:
        seqs, budgets = draft_budgets(self.scheduler.running, self.drafter.num_tokens, self.max_model_len)
        if seqs:
            self.drafter.propose(seqs, budgets)

    def _update(self, batch: ScheduledBatch, out: StepOutput) -> list[StreamDelta]:
        """Record prompt log-probabilities; verify the rows with drafts one by one, then sample the others
        together (a prompt-only request finishes instead)."""
        deltas: list[StreamDelta] = []
        for i, (first, entries) in out.prompt_logprobs.items():
            seq = batch.seqs[i]
            # A preempted sequence recomputes its prompt: keep each position's entry once.
            seq.prompt_logprobs.extend(entries[len(seq.prompt_logprobs) - first:])
        plain, plain_logits = [], []
        for i, logits in out.row_logits():
            if batch.seqs[i].max_tokens == 0:
                deltas.append(self._finish_scored(batch.seqs[i]))
            elif len(logits) == 1:
                plain.append(batch.seqs[i])
                plain_logits.append(logits[0])
            else:
                deltas.extend(self._verify(batch.seqs[i], logits))
        for s in batch.seqs:  # drafts are consumed by this step whether or not the row sampled
            s.draft.clear()
        if plain:
            # Without drafts the rows are already one tensor: skip the copy.
            stacked = out.logits if len(plain) == len(out.logits) else torch.stack(plain_logits)
            deltas.extend(self._sample(plain, stacked))
        return deltas

    def _banned(self, s: Sequence) -> list[int] | None:
        return sorted(self.eos_token_ids | set(s.params.stop_token_ids)) \
            if len(s.output_token_ids) < s.params.min_tokens else None

    def _closer(self, budget: int) -> list[int]:
        """Tokens that end a thought: the early-stopping phrase, then </think> and a blank line (just the
        latter when the budget cannot hold the phrase)."""
        full = budget >= len(self._closer_ids(True))
        return self._closer_ids(full)

    def _closer_ids(self, phrase: bool) -> list[int]:
        if phrase not in self._closers:
            text = (EARLY_STOP if phrase else "") + "\n" + THINK_END + "\n\n"
            self._closers[phrase] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._closers[phrase]

    def _must_close(self, s: Sequence) -> bool:
        """The thought has to end now to keep within the budget (closing tokens included)."""
        budget = s.params.thinking_budget
        return (budget is not None and not s.thought_closed and not s.is_finished
                and len(s.output_token_ids) + len(self._closer(budget)) >= budget)

    def _close_thought(self, s: Sequence) -> list[StreamDelta]:
        """Append the closing tokens as if generated (the next step computes them as one chunk)."""
        deltas = []
        for t in self._closer(s.params.thinking_budget):
            # Forced, so certain: logprob 0 where logprobs are asked for (one entry per token).
            deltas.append(self._append(s, t, {t: 0.0} if s.params.logprobs is not None else None))
            if s.is_finished:
                break
        s.thought_closed = True
        return deltas

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[StreamDelta]:
        forced = [r for r, s in enumerate(seqs) if self._must_close(s)]
        if forced:  # rows out of thinking budget take the closing tokens instead of a sample
            deltas = [d for r in forced for d in self._close_thought(seqs[r])]
            keep = [r for r in range(len(seqs)) if r not in forced]
            if not keep:
                return deltas
            return deltas + self._sample([seqs[r] for r in keep], logits[torch.tensor(keep)])
        if logits.is_inference() and any(s.constraint is not None for s in seqs):
            logits = logits.clone()  # the runner's uncopied output: masking in place needs a normal tensor
        for r, s in enumerate(seqs):
            mask = s.constraint.allowed_tokens(logits.shape[1]) if s.constraint is not None else None
            if mask is not None:
                logits[r].masked_fill_(~mask, float("-inf"))
        result = sample(logits, [s.params for s in seqs], [s.prompt_token_ids for s in seqs],
                        [s.output_token_ids for s in seqs], [s.generator for s in seqs],
                        [self._banned(s) for s in seqs])
        return [self._append(s, t, lp) for s, t, lp in zip(seqs, result.tokens, result.logprobs)]

    def _verify(self, seq: Sequence, logits: torch.Tensor) -> list[StreamDelta]:
        """Accept a prefix of the drafts (a path of a tree) plus one target token; trim the cache to what
        was accepted."""
        prefix, drafted = seq.num_tokens, len(seq.draft.tokens)
        acc = accept(seq, logits, self._banned(seq))
        seq.draft.clear()
        k = seq.params.logprobs
        lps = acc.logits[: len(acc.tokens)].log_softmax(-1) if k is not None else None
        deltas = []
        for j, tok in enumerate(acc.tokens):
            deltas.append(self._append(seq, tok, logprob_entry(lps[j], tok, k) if lps is not None else None))
            if seq.is_finished:
                break
        # Accepted drafts past a stop are not output: count what was (mean accepted length =
        # (accepted + steps) / steps, each step also emits the target's own token unless it stopped first).
        emitted = min(acc.num_accepted, len(deltas))
        seq.num_drafted += drafted
        seq.num_accepted += emitted
        seq.num_spec_steps += 1
        for key, value in (("steps", 1), ("drafted", drafted), ("accepted", emitted)):
            self.spec_stats[key] += value
        if not seq.is_finished:
            move_path(self.cache, seq, prefix, acc.path)
            # Keys past the accepted tokens are stale: the next step overwrites them.
            seq.num_computed = seq.num_tokens - 1
            if self.drafter is not None:
                self.drafter.on_verified(seq, acc.num_accepted, acc.path)
        if self._must_close(seq):  # accepted drafts may have used the rest of the thinking budget
            deltas.extend(self._close_thought(seq))
        return deltas

    def _finish_scored(self, seq: Sequence) -> StreamDelta:
        """``max_tokens=0``: the prompt was scored, nothing is generated."""
        seq.finish("length")
        self._release(seq)
        return StreamDelta(seq.request_id, seq.index, "", [], True, "length")

    def _append(self, seq: Sequence, token: int, logprob: dict[int, float] | None) -> StreamDelta:
        delta = append_token(seq, token, logprob, self.eos_token_ids)
        if token == self.think_end:
            seq.thought_closed = True
        if seq.is_finished:
            self._release(seq)
        return delta

    # -- reading results and state ------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Queue lengths, KV-pool use, cache and speculative totals, LoRA adapters. The queues are copied
        first, so the server's event loop may call this while the engine thread steps."""
        running, waiting = list(self.scheduler.running), list(self.scheduler.waiting)
        bank, blocks, spec = self.runner.lora_bank, self.blocks, self.spec_stats
        names = tuple(bank.names) if bank is not None else ()

        def adapters(seqs: list[Sequence]) -> tuple[str, ...]:
            return tuple(sorted({names[s.lora_slot - 1] for s in seqs if s.lora_slot}))

        return EngineStats(len(waiting), len(running), self.scheduler.num_preemptions, blocks.num_blocks,
                           blocks.num_free, blocks.queried_tokens, blocks.hit_tokens, spec["steps"],
                           spec["drafted"], spec["accepted"], names, adapters(running), adapters(waiting))

    def running_request_ids(self) -> set[str]:
        return {s.request_id for s in list(self.scheduler.running)}

    def waiting_request_ids(self) -> set[str]:
        return {s.request_id for s in list(self.scheduler.waiting)}

    def collect(self, request_id: str) -> RequestOutput:
        seqs = self.requests[request_id]
        outs = [CompletionOutput(s.index, s.text, list(s.output_token_ids), s.finish_reason, s.stop_reason,
                                 s.logprobs if s.params.logprobs is not None else None,
                                 num_cached_tokens=s.num_cached_tokens,
                                 spec_steps=s.num_spec_steps, spec_drafted=s.num_drafted,
                                 spec_accepted=s.num_accepted) for s in seqs]
        prompt_lps = list(seqs[0].prompt_logprobs) if seqs[0].params.prompt_logprobs is not None else None
        return RequestOutput(request_id, self._prompts.get(request_id), seqs[0].prompt_token_ids, outs,
                             all(s.is_finished for s in seqs), prompt_lps)

    def pop(self, request_id: str) -> RequestOutput:
        out = self.collect(request_id)
        del self.requests[request_id]
        self._prompts.pop(request_id, None)
        return out
