"""qwen3lab: a complete, fast, hackable engine for Qwen3 models on PyTorch."""

from .engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from .llm import LLM, ChatResult
from .sampling import SamplingParams

__all__ = ["LLM", "SamplingParams", "ChatResult", "RequestOutput", "CompletionOutput", "StreamDelta"]
__version__ = "0.1.0"
