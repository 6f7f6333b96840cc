"""Write any checkpoint we load (safetensors folder, GGUF file, Hub id) as a llama.cpp GGUF file.

Owns: the HF -> GGUF tensor names (the inverse of `gguf_loader.GGUF_TO_HF`), the per-tensor type
choice for each `outtype`, quantisation through `gguf.quants.quantize`, the llama Q/K row
permutation, the hyperparameter keys llama.cpp reads, and streaming the file one tensor at a time
(peak memory stays near one tensor, not the model). The tokenizer fields come from `gguf_vocab`.
Key names and type choices follow llama.cpp's convert_hf_to_gguf.py (`TextModel.set_gguf_parameters`,
`ModelBase.prepare_tensors`, `LlamaModel`); Q4_0 follows llama-quantize, which the converter leaves to.
Leaves out: K-quants (gguf-py cannot quantise them), sliding-window layers (no GGUF key for qwen2/3).
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from .export_source import ExportSource
from .gguf_loader import GGUF_TO_HF, expected_shapes
from .gguf_vocab import vocab_from_gguf, vocab_from_tokenizer

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
_MAIN_TYPE = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
_HF_TO_GGUF = {hf: g for g, hf in GGUF_TO_HF.items()}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


class _Writer(gguf.GGUFWriter):
    """GGUFWriter packing long string/int arrays in bulk: gguf-py packs 150k vocab entries one by one (~10 s)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        V = gguf.GGUFValueType
        bulk = (vtype == V.ARRAY and isinstance(val, list) and len(val) > 1024
                and self.endianess == gguf.GGUFEndian.LITTLE)
        if bulk and all(isinstance(v, str) for v in val):
            encoded = [v.encode("utf-8") for v in val]
            body = b"".join(struct.pack("<Q", len(b)) + b for b in encoded)
            head = struct.pack("<I", V.ARRAY) if add_vtype else b""
            return head + struct.pack("<IQ", V.STRING, len(val)) + body
        if bulk and sub_type in (None, V.INT32) and all(type(v) is int for v in val):
            head = struct.pack("<I", V.ARRAY) if add_vtype else b""
            return head + struct.pack("<IQ", V.INT32, len(val)) + np.asarray(val, dtype="<i4").tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a Hugging Face tensor name, or None if the table has none."""
    m = _HF_LAYER.fullmatch(hf_name)
    if m is None:
        return _HF_TO_GGUF.get(hf_name)
    template = _HF_TO_GGUF.get(f"model.layers.{{i}}.{m.group(2)}")
    return template.format(i=m.group(1)) if template else None


def permute_llama_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: interleave each head's rotary halves for llama.cpp."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_type(name: str, shape: tuple[int, ...], outtype: str, tied: bool) -> Q:
    """The GGML type `name` is written as for `outtype` (a key of OUTTYPES)."""
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return Q.F32  # the converter keeps 1-D tensors and norms in F32: ggml's norm/add kernels want F32
    qtype = _MAIN_TYPE[outtype]
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    if qtype == Q.Q4_0 and is_output:
        # llama-quantize gives the output matrix Q6_K for Q4_0; gguf-py cannot make K-quants, Q8_0 is next best.
        qtype = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        return Q.F16  # the converter's fallback when rows do not split into quant blocks
    return qtype


def _check_exportable(src: ExportSource) -> None:
    cfg = src.config
    if "sliding_attention" in cfg.layer_types:
        raise ValueError(f"{src.path}: sliding-window layers cannot be written to GGUF (llama.cpp has no key for "
                         f"them in {cfg.model_type}); the exported model would attend differently")
    if cfg.mlp_bias:
        raise ValueError(f"{src.path}: mlp_bias tensors have no GGUF name in our table; cannot export")


def _write_hparams(w: gguf.GGUFWriter, src: ExportSource, outtype: str) -> None:
    cfg = src.config
    w.add_name(src.path.stem if src.path.is_file() else src.path.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope.theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.model_type == "llama":  # LlamaModel.set_gguf_parameters adds these two
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(cfg.head_dim)
    rope = cfg.rope
    if rope.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope.factor)
    elif rope.rope_type == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope.factor)
        w.add_rope_scaling_orig_ctx_len(rope.original_max_position_embeddings)
        if rope.attention_factor is not None:
            w.add_rope_scaling_yarn_attn_factor(rope.attention_factor)
        w.add_rope_scaling_yarn_beta_fast(rope.beta_fast)
        w.add_rope_scaling_yarn_beta_slow(rope.beta_slow)
    # llama3 scaling travels as the rope_freqs tensor instead (see _llama3_rope_factors).
    w.add_file_type(_FILE_TYPE[outtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _llama3_rope_factors(src: ExportSource) -> np.ndarray | None:
    """LlamaModel.generate_extra_tensors: per-frequency divisors that llama.cpp applies for llama3 RoPE."""
    rope, dim = src.config.rope, src.config.head_dim
    if rope.rope_type != "llama3":
        return None
    old_ctx = rope.original_max_position_embeddings or 8192
    low_wavelen, high_wavelen = old_ctx / rope.low_freq_factor, old_ctx / rope.high_freq_factor
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * rope.theta ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rope.factor)
        else:
            smooth = (old_ctx / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
            factors.append(1 / ((1 - smooth) / rope.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _encode(array: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def export_gguf(model: str | os.PathLike | ExportSource, out: str | os.PathLike, outtype: str = "bf16") -> Path:
    """Write `model` as a GGUF file at `out` with tensors of `outtype` (f32, f16, bf16, q8_0, q4_0).

    Returns the path written. Raises ValueError for an unknown outtype, a tensor the checkpoint lacks
    or has in the wrong shape, or a model GGUF cannot describe (sliding-window layers).
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} is not supported; choose one of {', '.join(OUTTYPES)}")
    src = model if isinstance(model, ExportSource) else ExportSource(model)
    _check_exportable(src)
    cfg, out = src.config, Path(out)
    tied = cfg.tie_word_embeddings

    # Plan every tensor (name, shape, type) from the source's order before any data is read.
    shapes = src.tensor_shapes()
    plan: dict[str, tuple[str, tuple[int, ...], Q]] = {}
    for hf, shape in shapes.items():
        name = gguf_name(hf)
        if name is None:
            raise ValueError(f"{src.path}: tensor {hf} has no GGUF name for {cfg.model_type}; cannot export it")
        plan[hf] = (name, shape, tensor_type(name, shape, outtype, tied))
    layout = {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
              "head_dim": cfg.head_dim, "num_attention_heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size,
              "num_key_value_heads": cfg.num_key_value_heads, "tie_word_embeddings": tied,
              "attention_bias": cfg.qkv_bias, "num_hidden_layers": cfg.num_hidden_layers}
    planned = {name: shape for name, shape, _ in plan.values()}
    for name, shape in expected_shapes(layout).items():
        if name not in planned:
            raise ValueError(f"{src.path}: tensor {GGUF_TO_HF.get(name, name)} ({name}) is missing; cannot export")
        if tuple(planned[name]) != tuple(shape):
            raise ValueError(f"{src.path}: tensor {name} has shape {list(planned[name])}, expected {list(shape)}")

    # Written beside `out` and renamed at the end, so a failed export leaves no truncated .gguf behind.
    part = out.with_name(out.name + ".part")
    try:
        _write_file(src, part, plan, outtype)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, out)
    return out


def _write_file(src: ExportSource, path: Path, plan: dict[str, tuple[str, tuple[int, ...], Q]], outtype: str) -> None:
    cfg = src.config
    writer = _Writer(path, cfg.model_type)
    _write_hparams(writer, src, outtype)
    vocab = (vocab_from_gguf(src.metadata) if src.metadata is not None
             else vocab_from_tokenizer(src.tokenizer, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids))
    vocab.write(writer)
    rope_factors = _llama3_rope_factors(src)
    if rope_factors is not None:
        writer.add_tensor_info("rope_freqs.weight", rope_factors.shape, np.dtype(np.float32),
                               rope_factors.nbytes, Q.F32)
    for name, shape, qtype in plan.values():
        writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if rope_factors is not None:
        writer.write_tensor_data(rope_factors)
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for hf, tensor in src.tensors():  # same order as tensor_shapes(), so as the tensor infos
        name, shape, qtype = plan[hf]
        array = tensor.to(torch.float32).numpy()
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        if cfg.model_type == "llama" and kind in heads:
            array = permute_llama_qk(array, heads[kind])
        writer.write_tensor_data(_encode(array, qtype))
    writer.close()
