"""Rotary-embedding scaling chosen at run time (``rope_scaling=`` / ``--rope-scaling JSON``).

Qwen3 reads 32,768 tokens natively and 131,072 with YaRN factor 4, which its model card enables by
adding ``rope_scaling`` to config.json; vLLM takes the same object as ``--rope-scaling`` (hf-overrides)
and llama.cpp as ``--rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 32768``. The object here is
the one config.json holds, ``{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings":
32768}``, and it raises the context to ``factor x original`` when that is longer.

Static YaRN (transformers', vLLM's and llama.cpp's) rescales every sequence, which the Qwen3 card
warns may cost quality on short texts. ``"long_only": true`` scales only sequences longer than the
original window: a request starts unscaled while its prompt fits, and the step before it would feed
a position past the window it is recomputed from its tokens with YaRN (as a preempted sequence is),
so every sequence's keys come from one embedding. Its prefix-cache blocks are keyed apart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .config import SUPPORTED_ROPE_TYPES, ModelConfig, _parse_rope

KEYS = ("rope_type", "type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
        "attention_factor", "mscale", "mscale_all_dim", "truncate", "low_freq_factor", "high_freq_factor",
        "long_only")


def parse(spec: str | dict | None) -> dict | None:
    """A dict, a JSON string or the path of a JSON file -> the checked settings dict (or None)."""
    if spec is None:
        return None
    source = "rope_scaling"
    if not isinstance(spec, dict):
        text, source = spec, "--rope-scaling"
        if not spec.lstrip().startswith("{"):
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"--rope-scaling {spec!r}: neither a JSON object nor a file")
            text, source = path.read_text(), str(path)
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not JSON ({e.msg})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected a JSON object such as {{\"rope_type\": \"yarn\", \"factor\": 4.0, "
                         "\"original_max_position_embeddings\": 32768}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KEYS)}")
    kind = spec.get("rope_type", spec.get("type"))
    if kind not in SUPPORTED_ROPE_TYPES or kind == "default":
        raise ValueError(f"{source}: 'rope_type' must be one of {', '.join(SUPPORTED_ROPE_TYPES[1:])}, found {kind!r}")
    factor = spec.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise ValueError(f"{source}: 'factor' must be a number >= 1, found {factor!r}")
    orig = spec.get("original_max_position_embeddings")
    if orig is not None and (isinstance(orig, bool) or not isinstance(orig, int) or orig < 1):
        raise ValueError(f"{source}: 'original_max_position_embeddings' must be a positive integer, found {orig!r}")
    if not isinstance(spec.get("long_only", False), bool):
        raise ValueError(f"{source}: 'long_only' must be true or false, found {spec['long_only']!r}")
    return dict(spec)


def apply(config: ModelConfig, spec: dict | None) -> ModelConfig:
    """The config with ``spec``'s rotary scaling and the context it reaches."""
    if spec is None:
        return config
    raw = {"rope_theta": config.rope.theta, "max_position_embeddings": config.max_position_embeddings,
           "rope_scaling": spec}
    rope = _parse_rope(raw, "rope_scaling")
    orig = rope.original_max_position_embeddings or config.max_position_embeddings
    if rope.long_only and rope.original_max_position_embeddings is None:
        rope = dataclasses.replace(rope, original_max_position_embeddings=orig)
    context = max(config.max_position_embeddings, int(rope.factor * orig))
    return dataclasses.replace(config, rope=rope, max_position_embeddings=context)


def long_window(config: ModelConfig) -> int | None:
    """With ``long_only`` scaling: the original window, past which a sequence is scaled; else None."""
    rope = config.rope
    return rope.original_max_position_embeddings if rope.long_only and rope.rope_type != "default" else None
