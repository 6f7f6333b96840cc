"""A snapshot of the engine's state for metrics and admission control (``LLMEngine.stats()``).

Readers (the server's /metrics, its overload check) get numbers and names, never the scheduler's
queues or the block manager themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int  # sequences waiting to be scheduled
    num_running: int  # sequences in the running batch
    num_preemptions: int
    kv_blocks_total: int
    kv_blocks_free: int  # includes blocks only the prefix cache remembers (evictable)
    prefix_cache_queried_tokens: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hit_tokens: int  # of those, tokens found
    spec_steps: int  # speculative verification steps, draft tokens proposed and accepted
    spec_drafted: int
    spec_accepted: int
    lora_adapters: tuple[str, ...] = ()  # loaded LoRA adapter names
    running_lora_adapters: tuple[str, ...] = ()  # adapters with running / waiting sequences, sorted
    waiting_lora_adapters: tuple[str, ...] = ()

    @property
    def kv_blocks_used(self) -> int:
        return self.kv_blocks_total - self.kv_blocks_free

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV-cache blocks in use (1 = full)."""
        return 1.0 - self.kv_blocks_free / self.kv_blocks_total

    @property
    def prefix_cache_hit_rate(self) -> float:
        q = self.prefix_cache_queried_tokens
        return self.prefix_cache_hit_tokens / q if q else 0.0
