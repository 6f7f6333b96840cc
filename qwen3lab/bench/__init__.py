"""Benchmarks: random-weight checkpoints at real Qwen3 shapes measured side by side with peers, and our
HTTP server next to llama.cpp's under concurrent streaming load (``serving``)."""

from .checkpoint import random_checkpoint
from .run import run_bench
from .serving import run_serve_bench

__all__ = ["random_checkpoint", "run_bench", "run_serve_bench"]
