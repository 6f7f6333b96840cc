"""Read a llama.cpp GGUF checkpoint as a Hugging Face one: config dict, HF-named tensors, tokenizer.

Owns: GGUF metadata -> config.json / generation_config.json dicts, GGUF tensor names -> Hugging Face
names (the one table below), dequantisation through the `gguf` package, undoing the converter's Q/K
row permutation for `llama`, and checking that every tensor is there with the expected shape.
Leaves out: building the model, and the tokenizer itself (`gguf_tokenizer`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from tokenizers import Tokenizer

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
_HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF name -> Hugging Face name. `{i}` is the layer index.
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")
# llama.cpp stores Llama-3.1 rope factors as a tensor; nothing in a HF checkpoint corresponds.
_IGNORED = {"rope_freqs.weight"}
_GGUF_MAGIC = b"GGUF"


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if the table has none."""
    m = _LAYER_NAME.fullmatch(gguf_name)
    if m is None:
        return GGUF_TO_HF.get(gguf_name)
    template = GGUF_TO_HF.get(f"blk.{{i}}.{m.group(2)}")
    return template.format(i=m.group(1)) if template else None


def open_gguf(path: str | os.PathLike) -> GGUFReader:
    """A `GGUFReader` for `path`, after checking the file starts with the GGUF magic."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, not {_GGUF_MAGIC!r}")
    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises bare ValueError/IndexError on truncated or corrupt headers
        raise ValueError(f"{path}: cannot read the GGUF header ({e}); the file may be truncated") from e


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every metadata key of the file as a plain Python value."""
    out = {}
    for key, field in reader.fields.items():
        if not field.types:
            continue
        value = field.contents()
        if field.types == [GGUFValueType.FLOAT32]:
            value = float(str(np.float32(value)))  # shortest float32 spelling: 1e-05, not 9.99999974e-06
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def unpermute_llama_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's `LlamaModel.permute`, back to rotate-half row order.

    The converter interleaves each head's two rotary halves (for llama.cpp's pairwise RoPE);
    this is its inverse: reshape(n_head, half, 2) -> swap -> (n_head, 2, half).
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(
    meta: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]], source: str = "GGUF"
) -> dict[str, Any]:
    """A Hugging Face config.json dict from GGUF metadata and the (HF-order) tensor shapes."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{source}: GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    hidden = key("embedding_length")
    heads = key("attention.head_count")
    if hidden is None or heads is None or key("block_count") is None:
        raise ValueError(f"{source}: metadata lacks {arch}.embedding_length, .attention.head_count or .block_count")
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError(f"{source}: tensor token_embd.weight (model.embed_tokens.weight) is missing")
    config = {
        "model_type": arch,
        "architectures": [_HF_CLASS[arch]],
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": key("attention.key_length", hidden // heads),
        "hidden_act": "silu",
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": key("rope.freq_base", 10000.0),
        "max_position_embeddings": key("context_length"),
        # The embedding's row count is the truth; `{arch}.vocab_size` is often absent.
        "vocab_size": tensor_shapes["token_embd.weight"][0],
        "tie_word_embeddings": "output.weight" not in tensor_shapes,
        "attention_bias": arch == "qwen2" or "blk.0.attn_q.bias" in tensor_shapes,
        "rope_scaling": _rope_scaling(meta, arch),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    return config


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict[str, Any] | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    rename = {
        "factor": "factor",
        "original_context_length": "original_max_position_embeddings",
        "attn_factor": "attention_factor",
        "yarn_beta_fast": "beta_fast",
        "yarn_beta_slow": "beta_slow",
    }
    scaling = {"rope_type": kind}
    for gguf_key, hf_key in rename.items():
        if (value := meta.get(f"{arch}.rope.scaling.{gguf_key}")) is not None:
            scaling[hf_key] = value
    return scaling


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """GGUF name -> HF-order shape of every tensor the checkpoint must hold (biases only where used)."""
    h, inter, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"token_embd.weight": (config["vocab_size"], h), "output_norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["output.weight"] = (config["vocab_size"], h)
    layer = {
        "attn_norm.weight": (h,), "ffn_norm.weight": (h,),
        "attn_q.weight": (q, h), "attn_k.weight": (kv, h), "attn_v.weight": (kv, h), "attn_output.weight": (h, q),
        "ffn_gate.weight": (inter, h), "ffn_up.weight": (inter, h), "ffn_down.weight": (h, inter),
    }  # fmt: skip
    if config["attention_bias"]:
        layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
        if config["model_type"] != "qwen2":  # Llama's attention_bias covers o_proj too; Qwen2 has none there
            layer["attn_output.bias"] = (h,)
    if config["model_type"] == "qwen3":
        layer.update({"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)})
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


class GGUFCheckpoint:
    """A GGUF file seen as a Hugging Face checkpoint folder. Tensors are read lazily, one at a time."""

    def __init__(self, path: Path, reader: GGUFReader, dtype: torch.dtype):
        self.path, self.dtype, self._reader = path, dtype, reader
        self.metadata = read_metadata(reader)
        # GGUF lists dimensions fastest-first (ne[]); torch wants the reverse.
        shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
        self.config = gguf_config(self.metadata, shapes, str(path))
        self._check_tensors(shapes)
        eos = [self.config["eos_token_id"]]
        if (eot := self.metadata.get("tokenizer.ggml.eot_token_id")) not in (None, eos[0]):
            eos.append(eot)  # end-of-turn also ends generation (llama.cpp stops on both)
        self.generation_config = {
            "bos_token_id": self.config["bos_token_id"],
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
        }

    def _check_tensors(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in expected_shapes(self.config).items():
            if name not in shapes:
                raise ValueError(
                    f"{self.path}: tensor {name} ({hf_name(name)}) is missing from the GGUF file; "
                    "the file is truncated or was converted without it: re-download or re-convert it"
                )
            if shapes[name] != shape:
                raise ValueError(
                    f"{self.path}: tensor {name} ({hf_name(name)}) has shape {list(shapes[name])}, "
                    f"expected {list(shape)} from the file's metadata"
                )
        for name in shapes:
            if hf_name(name) is None and name not in _IGNORED:
                raise ValueError(f"{self.path}: tensor {name} has no Hugging Face name for {self.config['model_type']}")

    @property
    def tokenizer_files(self) -> tuple[Tokenizer, dict[str, Any]]:
        """`(tokenizers.Tokenizer, kwargs)` for `qwen3lab.tokenizer.Tokenizer(tok, **kwargs)`.

        kwargs: chat_template, bos_token, eos_token, add_bos_token (and pad/unk/add_eos). Built
        afresh on each access, because the wrapper installs its own post-processor on `tok`.
        """
        from .gguf_tokenizer import build_tokenizer

        return build_tokenizer(self.metadata)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(hf_name, tensor)` in file order, each dequantised to `self.dtype` on the CPU."""
        cfg = self.config
        permuted_heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
        for t in self._reader.tensors:
            name = hf_name(t.name)
            if name is None:
                # Only rope_freqs gets here: Llama-3.1-style RoPE factors, which the config does not carry.
                warnings.warn(f"{self.path}: ignoring {t.name}; RoPE runs without its frequency factors", stacklevel=2)
                continue
            try:
                array = dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise NotImplementedError(
                    f"{self.path}: tensor {t.name} is stored as {t.tensor_type.name}, which gguf cannot dequantise: {e}"
                ) from None
            array = array.reshape(tuple(int(n) for n in reversed(t.shape)))
            kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
            if cfg["model_type"] == "llama" and kind in permuted_heads:
                array = unpermute_llama_qk(array, permuted_heads[kind])
            if not array.flags.writeable:  # F32 data is a view of the read-only memory map
                array = array.copy()
            yield name, torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)


def load_gguf(path: str | os.PathLike, dtype: torch.dtype) -> GGUFCheckpoint:
    """Open the GGUF file at `path`: metadata and checks now, tensors only as `tensors()` is iterated.

    Raises ValueError for a file that is not GGUF, an unsupported architecture, or a missing or
    misshapen tensor.
    """
    path = Path(path)
    return GGUFCheckpoint(path, open_gguf(path), dtype)
