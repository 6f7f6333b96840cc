"""Engine settings: one frozen dataclass holding every engine default once.

``LLM(...)`` keyword defaults and the `qwen3lab serve` flag defaults read these fields, so a default
changes here and nowhere else. Leaves out: model architecture (``qwen3lab.config``) and speculative
decoding (``qwen3lab.speculative.config``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 16  # sequences per batch
    max_num_batched_tokens: int = 512  # tokens per step: bounds prefill chunks and step latency
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    kv_cache_memory_gb: float = 4.0  # pool budget (vLLM's CPU default); never more than max_num_seqs x max_model_len
    block_size: int = 16  # tokens per KV-cache block
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"  # "auto": the model's dtype; "int8": per-token-head int8 (half of bf16)

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        from .kv_cache import check_kv_cache_dtype

        check_kv_cache_dtype(self.kv_cache_dtype)
        if self.kv_cache_memory_gb <= 0:
            raise ValueError(f"EngineConfig.kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")

    def context_len(self, max_position_embeddings: int) -> int:
        """The context window before the KV pool is sized (the pool may lower it)."""
        return self.max_model_len or max_position_embeddings
