"""Embedding lookups read from the checkpoint file instead of its memory map.

A quantized model keeps the float embedding table for lookups (its head is a quantized copy), and
decoding reads only a few rows of it. Through the memory map those reads still cost resident memory
far beyond the rows: the page cache holds files in large folios (up to megabytes), a fault maps the
whole folio, and readahead adds more. Measured on Qwen3-4B int4 (bf16 table of 0.78 GB): one
512-token prompt of varied tokens made 0.49 GB of the table resident, MADV_RANDOM or not. ``pread`` of
just the rows costs a system call per token (microseconds) and leaves resident only the output.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import file_location, release_file_pages


class FileRowsEmbedding(nn.Module):
    """Drop-in for ``nn.Embedding`` whose inference lookups ``pread`` rows from the checkpoint file.

    ``weight`` is still the mapped matrix, for anything that wants it whole (it then pages in as before);
    lookups under autograd with a trainable weight use it too.
    """

    def __init__(self, embedding: nn.Embedding, path: str, offset: int):
        super().__init__()
        self.weight = embedding.weight
        self.num_embeddings, self.embedding_dim = self.weight.shape
        self.path, self._offset = path, offset
        self._row_bytes = self.embedding_dim * self.weight.element_size()
        self._fd = os.open(path, os.O_RDONLY)

    @classmethod
    def swap(cls, parent: nn.Module, attr: str = "embed_tokens") -> bool:
        """Replace ``parent.<attr>`` where its weight is a view of a mapped file; returns whether it did."""
        emb = getattr(parent, attr)
        if type(emb) is not nn.Embedding or emb.padding_idx is not None or emb.max_norm is not None:
            return False
        where = file_location(emb.weight)
        if where is None:
            return False
        setattr(parent, attr, cls(emb, *where))
        release_file_pages([emb.weight])  # whatever loading touched
        return True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad and torch.is_grad_enabled():
            return F.embedding(input_ids, self.weight)
        ids = input_ids.reshape(-1).tolist()
        out = torch.empty(len(ids), self.embedding_dim, dtype=self.weight.dtype)
        flat, rb = memoryview(out.view(torch.uint8).reshape(-1).numpy()), self._row_bytes
        for i, t in enumerate(ids):
            if not 0 <= t < self.num_embeddings:
                raise IndexError(f"token id {t} is outside the embedding table [0, {self.num_embeddings})")
            if os.preadv(self._fd, [flat[i * rb: (i + 1) * rb]], self._offset + t * rb) != rb:
                raise OSError(f"{self.path}: short read of embedding row {t}; was the checkpoint changed on disk?")
        return out.view(*input_ids.shape, self.embedding_dim).to(input_ids.device)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows read from {self.path}"
