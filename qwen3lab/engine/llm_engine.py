"""The engine: requests in, token/text deltas out, one scheduler step at a time.

Owns request bookkeeping (n samples, per-sequence RNG, stop conditions, incremental text with
stop strings held back until they can no longer match). ``LLM`` drives it to completion offline;
the server drives the same ``step`` from its event loop.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from ..config import GenerationDefaults
from ..sampling import SamplingParams, sample
from ..model.attention_metadata import flat_index
from ..speculative import verify, verify_tree
from ..tokenizer.incremental import IncrementalDetokenizer
from .block_manager import BlockManager
from .kv_cache import PagedKVCache, bytes_per_block
from .model_runner import ModelRunner
from .outputs import CompletionOutput, RequestOutput, StreamDelta
from .scheduler import Scheduler
from .sequence import Sequence

log = logging.getLogger("qwen3lab")


@dataclass(frozen=True)
class EngineSettings:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # tokens per step: bounds prefill chunks and step latency
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    kv_cache_memory_gb: float = 4.0  # pool budget (vLLM's CPU default); never more than max_num_seqs x max_model_len
    block_size: int = 16
    enable_prefix_caching: bool = True


class LLMEngine:
    def __init__(self, model, tokenizer, generation: GenerationDefaults, settings: EngineSettings,
                 dtype: torch.dtype, device="cpu", drafter=None):
        self.tokenizer, self.generation, self.settings = tokenizer, generation, settings
        cfg = model.config
        self.max_model_len = settings.max_model_len or cfg.max_position_embeddings
        bs = settings.block_size
        per_block = bytes_per_block(cfg, bs, dtype)
        wanted = -(-settings.max_num_seqs * self.max_model_len // bs)
        num_blocks = max(1, min(wanted, int(settings.kv_cache_memory_gb * 2**30 // per_block)))
        if num_blocks * bs < self.max_model_len:
            log.warning("KV cache of %.1f GiB holds %d tokens: max_model_len lowered from %d",
                        settings.kv_cache_memory_gb, num_blocks * bs, self.max_model_len)
            self.max_model_len = num_blocks * bs
        self.cache = PagedKVCache(cfg, num_blocks, bs, dtype, device)
        self.blocks = BlockManager(num_blocks, bs, settings.enable_prefix_caching)
        self.blocks.on_discard = self.cache.discard  # finished sequences' KV memory goes back to the OS
        self.scheduler = Scheduler(self.blocks, settings.max_num_seqs, settings.max_num_batched_tokens)
        self.runner = ModelRunner(model, self.cache, device)
        self.drafter = drafter
        self.spec_stats = {"steps": 0, "drafted": 0, "accepted": 0}  # totals, for metrics
        eos = set(generation.eos_token_ids) | set(cfg.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = eos
        self.requests: dict[str, list[Sequence]] = {}
        self._prompts: dict[str, str | None] = {}
        self._ids = itertools.count()

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
        params = params.resolve(self.generation)
        request_id = request_id or f"req-{next(self._ids)}"
        room = self.max_model_len - n
        budget = min(params.max_tokens or room, room)
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

    def _draft(self) -> None:
        """Ask the drafter for tokens for every decoding sequence, within its token and context budget."""
        seqs, budgets = [], []
        for s in self.scheduler.running:
            if s.in_prefill or s.constraint is not None:
                continue
            k = min(self.drafter.num_tokens, s.max_tokens - len(s.output_token_ids) - 1,
                    self.max_model_len - s.num_tokens - 1)
            if k > 0:
                seqs.append(s)
                budgets.append(k)
        if seqs:
            self.drafter.propose(seqs, budgets)

    def step(self) -> list[StreamDelta]:
        if self.drafter is not None:
            self._draft()
        batch = self.scheduler.schedule()
        if batch is None:
            if self.scheduler.has_unfinished():
                raise RuntimeError("scheduler made no progress with requests pending (KV pool too small?)")
            return []
        capture = tuple(getattr(self.drafter, "hidden_layers", ()))
        rows, logits, widths = self.runner.run(batch, capture)
        if capture:  # feature-level drafters (EAGLE3) see the target's hidden states of every fed token
            self.drafter.observe(batch.seqs, batch.num_new_tokens, self.runner.last_starts, self.runner.captured)
        self.scheduler.step_done(batch)
        deltas: list[StreamDelta] = []
        plain, plain_logits, offset = [], [], 0
        for i, m in zip(rows, widths):
            seq = batch.seqs[i]
            if m == 1:
                plain.append(seq)
                plain_logits.append(logits[offset])
            else:
                deltas.extend(self._verify(seq, logits[offset: offset + m]))
            offset += m
        for s in batch.seqs:  # drafts are consumed by this step whether or not the row sampled
            s.spec_tokens, s.spec_probs, s.spec_parents = [], None, None
        if plain:
            # Without drafts the rows are already one tensor: skip the copy.
            stacked = logits if len(plain) == len(rows) and offset == len(rows) else torch.stack(plain_logits)
            deltas.extend(self._sample(plain, stacked))
        return deltas

    def _banned(self, s: Sequence) -> list[int] | None:
        return sorted(self.eos_token_ids | set(s.params.stop_token_ids)) \
            if len(s.output_token_ids) < s.params.min_tokens else None

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[StreamDelta]:
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
        drafts, parents, prefix = seq.spec_tokens, seq.spec_parents, seq.num_tokens
        path = None
        if parents is None:
            tokens, accepted = verify(logits, drafts, seq.spec_probs, seq.params, seq.prompt_token_ids,
                                      seq.output_token_ids, seq.generator, self._banned(seq), seq.params.min_tokens)
        else:
            tokens, path = verify_tree(logits, drafts, parents, seq.params, seq.prompt_token_ids,
                                       seq.output_token_ids, seq.generator, self._banned(seq), seq.params.min_tokens)
            accepted = len(path)
            # Logits rows follow the tree's node order; give logprobs the path's rows.
            logits = logits[torch.tensor([0] + [j + 1 for j in path])]
        seq.spec_tokens, seq.spec_probs, seq.spec_parents = [], None, None
        want_lp = seq.params.logprobs is not None
        lps = logits[: len(tokens)].log_softmax(-1) if want_lp else None
        deltas = []
        for j, tok in enumerate(tokens):
            lp = None
            if want_lp:
                lp = {tok: float(lps[j, tok])}
                if seq.params.logprobs:
                    vals, ids = lps[j].topk(seq.params.logprobs)
                    for t, v in zip(ids.tolist(), vals.tolist()):
                        lp.setdefault(t, v)
            deltas.append(self._append(seq, tok, lp))
            if seq.is_finished:
                break
        # Accepted drafts past a stop are not output: count what was (mean accepted length =
        # (accepted + steps) / steps, each step also emits the target's own token unless it stopped first).
        emitted = min(accepted, len(deltas))
        seq.num_drafted += len(drafts)
        seq.num_accepted += emitted
        seq.num_spec_steps += 1
        for key, value in (("steps", 1), ("drafted", len(drafts)), ("accepted", emitted)):
            self.spec_stats[key] += value
        if not seq.is_finished:
            # An accepted tree path's keys go to the slots right after the sequence it now extends.
            moved = [(prefix + j, prefix + i) for i, j in enumerate(path or []) if i != j]
            if moved:
                device = self.cache.k[0].device
                src, dst = (flat_index(seq.block_table, torch.tensor(x), self.cache.block_size).to(device)
                            for x in zip(*moved))
                self.cache.move(src, dst)
            # Keys past the accepted tokens are stale: the next step overwrites them.
            seq.num_computed = seq.num_tokens - 1
            if self.drafter is not None:
                self.drafter.on_verified(seq, accepted, path)
        return deltas

    def _append(self, seq: Sequence, token: int, logprob: dict[int, float] | None) -> StreamDelta:
        seq.output_token_ids.append(token)
        if seq.constraint is not None:
            seq.constraint.advance(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        p = seq.params
        if token in p.stop_token_ids:
            seq.finish("stop", token)
        elif token in self.eos_token_ids and not p.ignore_eos:
            seq.finish("stop")
        piece = "" if seq.is_finished else seq.detok.step(token)
        if not seq.is_finished and len(seq.output_token_ids) >= seq.max_tokens:
            seq.finish("length")
        if seq.is_finished:
            piece += seq.detok.flush()
        text = self._stop_strings(seq, piece)
        seq.text += text
        if seq.is_finished:
            self._release(seq)
        return StreamDelta(seq.request_id, seq.index, text, [token], seq.is_finished, seq.finish_reason,
                           seq.stop_reason, [logprob] if logprob is not None else None)

    @staticmethod
    def _stop_strings(seq: Sequence, piece: str) -> str:
        """Return the text that can be emitted now; hold back a tail that might start a stop string."""
        stops = seq.params.stop
        if not stops:
            return piece
        buf = seq.pending_text + piece
        hits = [(buf.find(s), s) for s in stops if s in buf]
        if hits:
            idx, stop = min(hits)
            seq.pending_text = ""
            if not seq.is_finished or seq.finish_reason == "length":
                seq.finish("stop", stop)
            return buf[: idx + (len(stop) if seq.params.include_stop_str_in_output else 0)]
        if seq.is_finished:
            seq.pending_text = ""
            return buf
        keep = max(len(s) for s in stops) - 1
        cut = max(len(buf) - keep, 0)
        seq.pending_text = buf[cut:]
        return buf[:cut]

    def collect(self, request_id: str) -> RequestOutput:
        seqs = self.requests[request_id]
        outs = [CompletionOutput(s.index, s.text, list(s.output_token_ids), s.finish_reason, s.stop_reason,
                                 s.logprobs if s.params.logprobs is not None else None,
                                 num_cached_tokens=s.num_cached_tokens,
                                 spec_steps=s.num_spec_steps, spec_drafted=s.num_drafted,
                                 spec_accepted=s.num_accepted) for s in seqs]
        return RequestOutput(request_id, self._prompts.get(request_id), seqs[0].prompt_token_ids, outs,
                             all(s.is_finished for s in seqs))

    def pop(self, request_id: str) -> RequestOutput:
        out = self.collect(request_id)
        del self.requests[request_id]
        self._prompts.pop(request_id, None)
        return out
