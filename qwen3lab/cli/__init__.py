"""The `qwen3lab` command line: `generate`, `chat` and `info` over the offline `LLM` API.

The package owns argument parsing, terminal display and turning exceptions into one-line errors;
all model work goes through `qwen3lab.LLM`. Entry point: `main()` (`qwen3lab = "qwen3lab.cli:main"`).
"""

from .main import main

__all__ = ["main"]
