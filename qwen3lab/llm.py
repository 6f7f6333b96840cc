"""The offline front of the engine: ``LLM(model).generate(prompts, SamplingParams(...))`` and ``chat``.

Everything runs through ``LLMEngine`` (the same scheduler, KV cache and model runner the server
uses); this module only turns prompts and conversations into requests and collects the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .chat.parser import parse_output
from .engine.config import EngineConfig
from .engine.llm_engine import LLMEngine
from .engine.outputs import RequestOutput, StreamDelta
from .sampling import SamplingParams
from .speculative.config import SpeculativeConfig
from .weights.loader import load_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, checkpoint_dtype: str | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return DTYPES.get(checkpoint_dtype or "", torch.bfloat16)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def _checkpoint_dtype(model: str | Path) -> str | None:
    """The dtype a checkpoint folder's config.json declares, read before the weights (None for GGUF / hub ids)."""
    if not Path(str(model), "config.json").exists():
        return None
    from .config import read_json

    raw = read_json(Path(str(model), "config.json"), "model config")
    return raw.get("torch_dtype") or raw.get("dtype")


@dataclass
class ChatResult:
    content: str | None
    reasoning_content: str | None
    tool_calls: list[dict]
    text: str  # the raw generated text
    token_ids: list[int]
    finish_reason: str | None
    prompt_token_ids: list[int] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)


class LLM:
    def __init__(self, model: str | Path | None = None, dtype: str | torch.dtype = "auto", device: str = "cpu",
                 max_num_seqs: int = EngineConfig.max_num_seqs, max_model_len: int | None = EngineConfig.max_model_len,
                 max_num_batched_tokens: int = EngineConfig.max_num_batched_tokens,
                 kv_cache_memory_gb: float = EngineConfig.kv_cache_memory_gb,
                 enable_prefix_caching: bool = EngineConfig.enable_prefix_caching,
                 lora: str | Path | None = None, speculative: SpeculativeConfig | dict | None = None,
                 quantization: str | None = None, quantization_group_size: int | None = None,
                 lora_adapters: dict[str, str | Path] | None = None, attention: dict | str | None = None,
                 kv_cache_dtype: str = EngineConfig.kv_cache_dtype, rope_scaling: dict | str | None = None):
        """Engine settings (``max_num_seqs`` ... ``enable_prefix_caching``) default to ``EngineConfig``'s;
        ``speculative``: a ``SpeculativeConfig`` or its dict form, e.g. ``{"method": "ngram", "num_tokens": 4}``.

        ``quantization``: "int8" or "int4" weight-only quantization of every linear layer and the head
        (see qwen3lab/quant); ``quantization_group_size``: int4 group (32, 64, 128 or 256).

        ``lora``: one PEFT adapter folder applied to every request. ``lora_adapters``: {name: folder} of
        adapters served side by side on the unchanged base model, chosen per request with ``adapter=name``
        (qwen3lab/lora/multi.py); requests without one run the base model.

        ``attention``: hybrid full / sliding-window attention at run time, e.g. ``{"sliding_window": 2048,
        "full_layers": [...], "sink_tokens": 10, "full_attention_decode": False}`` (qwen3lab/hybrid_attention.py).

        ``kv_cache_dtype``: "auto" (the KV cache in the model's dtype) or "int8" (per-token-head scales: half
        the memory of bf16, read directly by the decode kernel).

        ``rope_scaling``: rotary scaling as config.json spells it, e.g. Qwen3's 131k context ``{"rope_type":
        "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}``; add ``"long_only": True`` to
        scale only sequences past the original window (qwen3lab/rope_scaling.py)."""
        # Resolve every setting first, so that a bad one fails before any loading work.
        engine = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                              max_model_len=max_model_len, kv_cache_memory_gb=kv_cache_memory_gb,
                              enable_prefix_caching=enable_prefix_caching, kv_cache_dtype=kv_cache_dtype)
        spec = SpeculativeConfig.of(speculative)
        from . import hybrid_attention

        attention = hybrid_attention.parse(attention)
        from . import rope_scaling as scaling

        rope_scaling = scaling.parse(rope_scaling)
        if isinstance(dtype, str) and dtype != "auto":
            resolve_dtype(dtype)
        if quantization is not None:
            from .quant.apply import check_mode

            check_mode(quantization, quantization_group_size)
        if lora is not None and lora_adapters:
            raise ValueError("give either lora= (one adapter for every request) or lora_adapters= (chosen per "
                             "request), not both; add the single adapter to lora_adapters to serve it by name")
        if model is None:
            from .weights.default_model import smollm2_gguf_path

            model = smollm2_gguf_path()
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, _checkpoint_dtype(model) if dtype == "auto" else None)
        # Load: the layouts are chosen as the model is built (packed, quantized, on the CPU kernels).
        ckpt = load_checkpoint(model, self.dtype, self.device, quantization, quantization_group_size, cpu_kernels=True,
                               attention=attention, max_len=max_model_len, rope_scaling=rope_scaling)
        self.model, self.config, self.tokenizer = ckpt.model, ckpt.config, ckpt.tokenizer
        self.generation_defaults, self.model_path = ckpt.generation, ckpt.path
        if lora is not None:  # a PEFT-format adapter folder, applied as a module swap
            from .lora import load_adapter

            load_adapter(self.model, lora, dropout=0.0).eval()
        if lora_adapters:  # served side by side, chosen per request (qwen3lab/lora/multi.py)
            from .lora import apply_adapters

            apply_adapters(self.model, lora_adapters)
        # Engine: the scheduler, KV cache and model runner that every request goes through.
        drafter = None
        if spec is not None:
            from .speculative import make_drafter

            drafter = make_drafter(spec, self.model, engine, self.dtype, self.device)
        self.engine = LLMEngine(self.model, self.tokenizer, self.generation_defaults, engine, self.dtype,
                                self.device, drafter=drafter)

    # -- prompts ---------------------------------------------------------------------------
    def _encode(self, prompt: str | list[int]) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt), prompt
        if not all(isinstance(t, int) for t in prompt):
            raise ValueError("a prompt must be a string or a list of token ids (ints)")
        return list(prompt), None

    def generate(self, prompts: str | list[int] | list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False, constraint_factory=None, adapter: str | None = None) -> list[RequestOutput]:
        """``constraint_factory`` (see ``qwen3lab.structured``) constrains every sample of every prompt;
        ``adapter`` names one of ``lora_adapters`` to generate with (None: the base model)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        ids = []
        for prompt, p in zip(prompts, params_list):
            tokens, text = self._encode(prompt)
            ids.append(self.engine.add_request(tokens, p, prompt=text, constraint_factory=constraint_factory,
                                               adapter=adapter))
        bar = tqdm(total=len(ids), desc="generating", unit="req", disable=not use_tqdm)
        done = set()
        while self.engine.has_unfinished():
            for d in self.engine.step():
                if d.finished and d.request_id not in done and self.engine.is_finished(d.request_id):
                    done.add(d.request_id)
                    bar.update(1)
        bar.close()
        return [self.engine.pop(r) for r in ids]

    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None,
               adapter: str | None = None) -> Iterator[StreamDelta]:
        """Yield text/token deltas of one prompt as they are generated (one request, all its samples)."""
        tokens, text = self._encode(prompt)
        rid = self.engine.add_request(tokens, sampling_params or SamplingParams(), prompt=text, adapter=adapter)
        try:
            while not self.engine.is_finished(rid):
                for d in self.engine.step():
                    if d.request_id == rid:
                        yield d
        finally:  # a consumer that stops early cancels the request
            self.engine.abort(rid)
            self.engine.pop(rid)

    # -- chat ------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, enable_thinking: bool | None = None,
                    **template_kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                  enable_thinking=enable_thinking, **template_kwargs)

    def thinking_enabled(self, enable_thinking: bool | None) -> bool:
        """Whether generated text starts in reasoning mode: the template knows <think> and it is not off."""
        return enable_thinking is not False and "<think>" in (self.tokenizer.chat_template or "")

    def chat(self, messages: list[dict] | list[list[dict]], tools: list[dict] | None = None,
             enable_thinking: bool | None = None, sampling: SamplingParams | None = None,
             response_format: dict | None = None, tool_choice=None, adapter: str | None = None,
             **template_kwargs) -> ChatResult | list[ChatResult]:
        """``response_format`` / ``tool_choice`` take OpenAI's shapes and constrain the answer to JSON
        or to tool calls (``qwen3lab.structured``); reasoning stays free."""
        from .structured import constraint_for_request  # lazily: llguidance loads only when used

        single = bool(messages) and isinstance(messages[0], dict)
        conversations = [messages] if single else messages
        thinking = self.thinking_enabled(enable_thinking)
        factory = constraint_for_request(self.tokenizer, response_format=response_format, tools=tools,
                                         tool_choice=tool_choice, thinking=thinking)
        prompts = [self.tokenizer.encode(self.render_chat(m, tools, enable_thinking, **template_kwargs),
                                         add_special_tokens=False) for m in conversations]
        outs = self.generate(prompts, sampling, constraint_factory=factory, adapter=adapter)
        results = []
        for out in outs:
            parsed = parse_output(out.text, thinking=thinking)
            results.append(ChatResult(parsed.content, parsed.reasoning_content, parsed.tool_calls, out.text,
                                      out.token_ids, out.finish_reason, out.prompt_token_ids, parsed.parse_errors))
        return results[0] if single else results

    # -- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, token_ids: list[int], chunk: int | None = None, adapter: str | None = None) -> torch.Tensor:
        """Next-token logits [len, vocab] (float32) for every position of one sequence.

        ``chunk``: feed the sequence ``chunk`` tokens at a time through the engine's paged KV cache
        instead of in one pass, so that every product is as small as in decoding (this is how the
        quantization bench scores the decode kernels). Needs an idle engine. ``adapter``: score with one
        of ``lora_adapters``.
        """
        slot = self.engine.adapter_slot(adapter)
        if not slot:
            return self._logits(token_ids, chunk)
        with self.engine.runner.lora_bank.active([slot] * len(token_ids), self.device):
            return self._logits(token_ids, chunk)

    def _logits(self, token_ids: list[int], chunk: int | None) -> torch.Tensor:
        from .model import AttentionMetadata

        n, cfg = len(token_ids), self.config
        ids = torch.tensor(list(token_ids), device=self.device)
        window = self.engine.long_window
        long = window is not None and n > window  # long-only rotary scaling: as the engine would run it
        if chunk is None:
            meta = AttentionMetadata.build([n], [n], cfg.layer_types, cfg.sliding_window, device=self.device,
                                           sink_tokens=cfg.sink_tokens)
            meta.long_rope = long
            return self.model.compute_logits(self.model(ids, meta)).cpu()
        from .engine.scheduler import ScheduledBatch
        from .engine.sequence import Sequence

        if self.engine.has_unfinished():
            raise RuntimeError("LLM.logits(chunk=...) uses the engine's KV cache; wait for running requests")
        cache, runner = self.engine.cache, self.engine.runner
        blocks = self.engine.new_blocks()
        seq = Sequence("logits", 0, list(token_ids), SamplingParams(max_tokens=1), n + 1)
        out = []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                m = min(chunk, n - start)
                if not blocks.allocate(seq, start + m):
                    raise RuntimeError(f"LLM.logits: {n} tokens do not fit the KV cache; raise kv_cache_memory_gb")
                _, meta = runner.prepare(ScheduledBatch([seq], [m]))
                meta.long_rope = long
                out.append(self.model.compute_logits(self.model(ids[start:start + m], meta, cache)).cpu())
                seq.num_computed = start + m
                blocks.trim(seq)  # sliding layers' blocks past their window go back, as in the engine
        # The blocks were written outside the engine's block manager: what its prefix cache held is gone.
        self.engine.blocks.forget_cached()
        return torch.cat(out)
