"""A checkpoint opened for export: config, tokenizer and float32 tensors under Hugging Face names.

Owns: presenting a safetensors folder, a GGUF file or a Hub repo id the same way to the exporters
(`gguf_export`, `safetensors_export`): the raw config.json dict and the validated `ModelConfig`,
generation_config.json, the tokenizer, and tensors streamed one at a time (GGUF ones dequantised
and, for llama, un-permuted by `gguf_loader`). Leaves out building a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import ModelConfig, read_json
from .hub import resolve_model_path
from .loader import IGNORED_SUFFIXES


class ExportSource:
    """Open `model` (folder, .gguf file or repo id). Tensors are read only while `tensors()` is iterated."""

    def __init__(self, model: str | Path):
        from ..tokenizer import Tokenizer

        self.path = resolve_model_path(model)
        self.gguf = None  # the GGUFCheckpoint when the source is a GGUF file
        if self.path.is_file():
            from .gguf_loader import load_gguf

            self.gguf = load_gguf(self.path, torch.float32)
            self.hf_config: dict[str, Any] = dict(self.gguf.config)
            self.generation: dict[str, Any] = dict(self.gguf.generation_config)
            tok, kwargs = self.gguf.tokenizer_files
            self.tokenizer = Tokenizer(tok, **kwargs)
        else:
            self.hf_config = read_json(self.path / "config.json", what="model config")
            gen_file = self.path / "generation_config.json"
            self.generation = read_json(gen_file, what="generation config") if gen_file.exists() else {}
            self.tokenizer = Tokenizer.from_dir(self.path)
        self.config = ModelConfig.from_dict(self.hf_config, source=str(self.path))

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The GGUF metadata of a GGUF source, else None."""
        return self.gguf.metadata if self.gguf is not None else None

    def _wanted(self, name: str) -> bool:
        tied_head = name == "lm_head.weight" and self.config.tie_word_embeddings
        return not (name.endswith(IGNORED_SUFFIXES) or tied_head)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(hf_name, float32 tensor)` for every weight the model uses, in the source's order."""
        if self.gguf is not None:
            for name, tensor in self.gguf.tensors():
                if self._wanted(name):
                    yield name, tensor
            return
        from .safetensors_loader import iter_safetensors

        for name, tensor, _ in iter_safetensors(self.path):
            if self._wanted(name):
                yield name, tensor.float()

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> shape for every tensor `tensors()` yields, in the same order, without reading data."""
        if self.gguf is not None:
            from .gguf_loader import hf_name

            shapes = {hf_name(t.name): tuple(int(n) for n in reversed(t.shape)) for t in self.gguf._reader.tensors}
            return {k: v for k, v in shapes.items() if k is not None and self._wanted(k)}
        from .safetensors_loader import safetensors_files

        shapes = {}
        for path in safetensors_files(self.path):
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if self._wanted(name):
                        shapes[name] = tuple(f.get_slice(name).get_shape())
        return shapes

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer files of a folder source, to copy as they are (empty for GGUF)."""
        if self.gguf is not None:
            return []
        names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt")
        return [self.path / n for n in names if (self.path / n).is_file()]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
