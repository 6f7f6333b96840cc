"""The `qwen3lab` command line, one module per command.

Commands: `generate`, `chat`, `info`, `quantize`, `eval-ppl`, `convert`, `serve`, `bench` (with
`bench serve` and `bench sft`), `sft`, `grpo` and `train-eagle3`.

The package owns argument parsing, terminal display and turning exceptions into one-line errors;
the work itself is the library's (`qwen3lab.LLM`, `qwen3lab.serve`, `qwen3lab.train`,
`qwen3lab.bench`, the exporters in `qwen3lab.weights`). Entry point: `main()`
(`qwen3lab = "qwen3lab.cli:main"`).
"""

from .main import main

__all__ = ["main"]
