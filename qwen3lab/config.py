"""Model configuration read from a checkpoint's ``config.json`` and ``generation_config.json``.

Owns: parsing and validating the architecture description for the dense decoder family we run
(``qwen3``, ``qwen2``, ``llama``), normalising the three RoPE spellings found in the wild, and
deriving per-layer attention types the way ``transformers`` does. Leaves out: weights, tokenizer,
engine settings (``EngineConfig`` in ``qwen3lab.engine.config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "yarn", "llama3", "linear")
LAYER_TYPES = ("full_attention", "sliding_attention")


class ConfigError(ValueError):
    """A config file is missing, unreadable, or describes a model we cannot run."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    # YaRN
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # Scaling only for sequences longer than original_max_position_embeddings; shorter ones keep the
    # unscaled rotary embedding (qwen3lab/rope_scaling.py). False: static scaling, as transformers.
    long_only: bool = False


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    layer_types: tuple[str, ...]
    sliding_window: int | None = None
    sink_tokens: int = 0  # first tokens every sliding-layer query also sees (run-time hybrid attention)
    full_attention_decode: bool = False  # generated tokens attend fully on sliding layers too
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], source: str = "<dict>") -> "ModelConfig":
        return _parse(cfg, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(read_json(path, what="model config"), source=str(path))

    @property
    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * q * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * (attn + mlp + 2 * h) + emb + h


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults a checkpoint ships in generation_config.json (None: not given)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @classmethod
    def from_dict(cls, g: dict[str, Any]) -> "GenerationDefaults":
        eos = g.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        temperature = g.get("temperature")
        # transformers treats do_sample=false as greedy whatever the temperature says.
        if g.get("do_sample") is False:
            temperature = 0.0
        return cls(
            temperature=temperature,
            top_p=g.get("top_p"),
            top_k=g.get("top_k"),
            min_p=g.get("min_p"),
            repetition_penalty=g.get("repetition_penalty"),
            max_new_tokens=g.get("max_new_tokens"),
            eos_token_ids=eos_ids,
            bos_token_id=g.get("bos_token_id"),
        )

    @classmethod
    def from_dir(cls, folder: str | Path) -> "GenerationDefaults":
        path = Path(folder) / "generation_config.json"
        return cls.from_dict(read_json(path, what="generation config")) if path.exists() else cls()


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} not found: {path} (a checkpoint folder needs config.json next to its weights)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object, found {type(data).__name__}")
    return data


def _req(cfg: dict, key: str, source: str, kind: type = int):
    if cfg.get(key) is None:
        raise ConfigError(f"{source}: required field '{key}' is missing")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{source}: field '{key}' must be a positive integer, found {value!r}")
    return value


def _parse_rope(cfg: dict, source: str) -> RopeConfig:
    # Three spellings: top-level rope_theta + rope_scaling ({type|rope_type}), or transformers 5's
    # single rope_parameters object holding rope_theta and the scaling keys.
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: rope type '{rope_type}' (field rope_scaling/rope_parameters) is not supported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    if merged.get("factor") is None:
        raise ConfigError(f"{source}: rope type '{rope_type}' needs a 'factor' in rope_scaling/rope_parameters")
    orig = merged.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
    if orig is None and rope_type in ("yarn", "llama3"):
        orig = cfg.get("max_position_embeddings")
    keys = {k: merged[k] for k in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim",
                                   "truncate", "low_freq_factor", "high_freq_factor", "long_only")
            if merged.get(k) is not None}
    return RopeConfig(theta=float(theta), rope_type=rope_type, factor=float(merged["factor"]),
                      original_max_position_embeddings=orig, **keys)


def _layer_types(cfg: dict, model_type: str, n_layers: int, source: str) -> tuple[tuple[str, ...], int | None]:
    window = cfg.get("sliding_window")
    if model_type == "llama":
        window = None
    elif not cfg.get("use_sliding_window", False):
        window = None  # transformers: sliding_window only counts when use_sliding_window is set
    explicit = cfg.get("layer_types")
    if explicit is not None:
        if len(explicit) != n_layers:
            raise ConfigError(f"{source}: 'layer_types' lists {len(explicit)} layers but num_hidden_layers is {n_layers}")
        bad = [t for t in explicit if t not in LAYER_TYPES]
        if bad:
            raise ConfigError(f"{source}: 'layer_types' has unknown entries {sorted(set(bad))}; expected {LAYER_TYPES}")
        types = tuple(explicit)
        if window is None:
            # transformers drops the window unless use_sliding_window is set, so "sliding" layers then
            # attend fully; we follow the reference rather than guess.
            types = tuple("full_attention" for _ in types)
    else:
        start = cfg.get("max_window_layers", n_layers)
        types = tuple("sliding_attention" if window is not None and i >= start else "full_attention"
                      for i in range(n_layers))
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ConfigError(f"{source}: 'sliding_window' must be a positive integer, found {window!r}")
    return types, (window if "sliding_attention" in types else None)


def _parse(cfg: dict[str, Any], source: str) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported (the dense Qwen/Llama MLP uses 'silu')")
    hidden = _req(cfg, "hidden_size", source)
    n_heads = _req(cfg, "num_attention_heads", source)
    n_layers = _req(cfg, "num_hidden_layers", source)
    n_kv = cfg.get("num_key_value_heads") or n_heads
    if n_heads % n_kv:
        raise ConfigError(
            f"{source}: num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({n_kv})"
        )
    head_dim = cfg.get("head_dim") or hidden // n_heads
    if cfg.get("head_dim") is None and hidden % n_heads:
        raise ConfigError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {n_heads}; set 'head_dim'")
    types, window = _layer_types(cfg, model_type, n_layers, source)
    eos = cfg.get("eos_token_id")
    attention_bias = bool(cfg.get("attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        vocab_size=_req(cfg, "vocab_size", source),
        hidden_size=hidden,
        intermediate_size=_req(cfg, "intermediate_size", source),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope=_parse_rope(cfg, source),
        layer_types=types,
        sliding_window=window,
        # Qwen2 hard-codes a q/k/v bias; Qwen3 and Llama follow attention_bias on all four projections.
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        source=source,
    )
