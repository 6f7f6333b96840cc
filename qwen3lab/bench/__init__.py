"""Benchmarks: random-weight checkpoints at real Qwen3 shapes, measured side by side with peers."""

from .checkpoint import random_checkpoint
from .run import run_bench

__all__ = ["random_checkpoint", "run_bench"]
