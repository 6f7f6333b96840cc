"""`qwen3lab info`: describe a checkpoint as loaded: architecture, sizes, tokenizer, chat template.

Owns: collecting those facts from a loaded `LLM` (config, parameters, tokenizer, generation
defaults) and printing them as aligned text or JSON. Leaves out any generation.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict

from ..hybrid_attention import describe as describe_attention
from .common import HelpFormatter, add_model_args, load_llm

ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}

EPILOG = """\
examples:
  qwen3lab info
  qwen3lab info --model Qwen/Qwen3-4B
  qwen3lab info --model ./SmolLM2-135M-Instruct.Q4_1.gguf --json

Parameter count and weight memory are measured on the loaded model (tied embeddings counted once),
so they follow --dtype; a GGUF file is dequantised on load.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model: architecture, sizes, tokenizer, chat template",
                       description="Load a model and describe it: architecture, sizes, tokenizer, chat template.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    p.set_defaults(func=run)


def _layer_summary(types: tuple[str, ...], window: int | None) -> str:
    counts = Counter(types)
    text = ", ".join(f"{n} x {t}" for t, n in counts.items())
    return text + (f" (window {window})" if window else "")


def _rope_summary(rope) -> str:
    text = f"{rope.rope_type}, theta {rope.theta:g}"
    if rope.rope_type != "default":
        text += f", factor {rope.factor:g}"
        if rope.original_max_position_embeddings:
            text += f", original context {rope.original_max_position_embeddings}"
    return text


def _human(n: float, units: tuple[str, ...], base: int, sep: str) -> str:
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.1f}{sep}{unit}" if unit != units[0] else f"{n:g}{sep}{unit}"
        n /= base


def describe(llm) -> dict:
    cfg, tok = llm.config, llm.tokenizer
    params = list(llm.model.parameters())  # a tied lm_head is the same Parameter: counted once
    n_params = sum(p.numel() for p in params)
    n_bytes = sum(p.numel() * p.element_size() for p in params)
    template = tok.chat_template
    template_text = "\n".join(template.values()) if isinstance(template, dict) else (template or "")
    gen = {k: v for k, v in asdict(llm.generation_defaults).items() if v not in (None, ())}
    return {
        "model": str(llm.model_path),
        "format": "GGUF file" if llm.model_path.is_file() else "safetensors folder",
        "architecture": ARCHITECTURES.get(cfg.model_type, cfg.model_type),
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "attention": f"{cfg.num_attention_heads} heads, {cfg.num_key_value_heads} kv heads, head_dim {cfg.head_dim}",
        "qk_norm": cfg.qk_norm,
        "tied_embeddings": cfg.tie_word_embeddings,
        "parameters": n_params,
        "parameters_human": _human(n_params, ("", "K", "M", "B"), 1000, ""),
        "dtype": str(llm.dtype).removeprefix("torch."),
        "weight_memory": _human(n_bytes, ("B", "KiB", "MiB", "GiB"), 1024, " "),
        "context_length": cfg.max_position_embeddings,
        "rope": _rope_summary(cfg.rope),
        "layer_types": _layer_summary(cfg.layer_types, cfg.sliding_window),
        "attention_layout": describe_attention(cfg),
        "vocab_size": cfg.vocab_size,
        "tokenizer_vocab": tok.vocab_size,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "chat_template": bool(template_text),
        "thinking": "<think>" in template_text,
        "tools_in_template": "tools" in template_text,
        "generation_defaults": gen,
    }


def run(args: argparse.Namespace) -> int:
    facts = describe(load_llm(args))
    if args.json:
        print(json.dumps(facts, indent=2, ensure_ascii=False))
        return 0
    facts["parameters"] = f"{facts.pop('parameters_human')} ({facts['parameters']:,})"
    facts["generation_defaults"] = ", ".join(f"{k}={v}" for k, v in facts["generation_defaults"].items()) or "none"
    for key in ("qk_norm", "tied_embeddings", "chat_template", "thinking", "tools_in_template"):
        facts[key] = "yes" if facts[key] else "no"
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0
