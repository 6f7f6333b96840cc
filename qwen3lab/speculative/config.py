"""Speculative decoding settings: one frozen dataclass, validated once, built from the JSON/dict form.

``LLM(speculative={...})`` and ``qwen3lab serve --speculative JSON`` both go through
``SpeculativeConfig.of``; drafters read typed fields, never dict keys. Leaves out: building the
drafter (``make_drafter``) and checks that need the models (vocabulary, hidden size).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

METHODS = ("ngram", "draft", "eagle3")
# The drafters' own KV pools are small: a draft model's layers, or EAGLE3's single layer.
DRAFT_KV_CACHE_GB = {"draft": 1.0, "eagle3": 0.5}
MODEL_NEEDED = {"draft": "a smaller checkpoint with the same tokenizer",
                "eagle3": "the folder of an EAGLE3 draft checkpoint"}
CASTS = {"num_tokens": int, "topk": int, "num_steps": int, "max_ngram": int, "min_ngram": int,
         "kv_cache_memory_gb": float}  # JSON and dict callers may give "4" or 4.0


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # "ngram" | "draft" | "eagle3"
    model: str | Path | None = None  # the draft checkpoint ("draft", "eagle3")
    num_tokens: int = 4  # draft tokens (tree nodes) verified per step
    topk: int = 1  # > 1: token trees with up to topk children per node
    num_steps: int | None = None  # tree depth of model drafters; None: tree_shape's default
    max_ngram: int = 4  # "ngram": longest suffix looked up
    min_ngram: int = 1
    kv_cache_memory_gb: float | None = None  # draft KV pool; None: DRAFT_KV_CACHE_GB of the method

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative method {self.method!r} is not supported; use 'ngram', 'draft' or 'eagle3'")
        for name in ("num_tokens", "topk", "min_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"speculative {name} must be >= 1, got {getattr(self, name)}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"speculative num_steps must be >= 1, got {self.num_steps}")
        if self.max_ngram < self.min_ngram:
            raise ValueError(f"speculative max_ngram ({self.max_ngram}) must be >= min_ngram ({self.min_ngram})")
        if self.method in MODEL_NEEDED and not self.model:
            raise ValueError(f"speculative method {self.method!r} needs 'model': {MODEL_NEEDED[self.method]}")
        if self.kv_cache_memory_gb is None and self.method in DRAFT_KV_CACHE_GB:
            object.__setattr__(self, "kv_cache_memory_gb", DRAFT_KV_CACHE_GB[self.method])
        if self.kv_cache_memory_gb is not None and self.kv_cache_memory_gb <= 0:
            raise ValueError(f"speculative kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")

    @classmethod
    def from_dict(cls, spec: dict) -> "SpeculativeConfig":
        """``{"method": ..., "num_tokens": k, ...}``; an unknown key is an error naming it."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in spec if k not in known]
        if unknown:
            raise ValueError(f"speculative config has unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys: {', '.join(known)}")
        values = {"method": None, **spec}  # a missing method fails in __post_init__ like an unknown one
        for name, cast in CASTS.items():
            if values.get(name) is not None:
                try:
                    values[name] = cast(values[name])
                except (TypeError, ValueError):
                    raise ValueError(f"speculative {name} must be a number, got {values[name]!r}") from None
        return cls(**values)

    @classmethod
    def of(cls, spec: "SpeculativeConfig | dict | None") -> "SpeculativeConfig | None":
        """The config of either form; None and {} mean no speculative decoding."""
        if not spec:
            return None
        return spec if isinstance(spec, cls) else cls.from_dict(spec)
