"""Packed [q; k; v] and [gate; up] projections compute what the separate ones do."""

from __future__ import annotations

import pytest
import torch

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from checkpoints import save_reference
from qwen3lab import LLM, kernels
from qwen3lab.model import AttentionMetadata, Linear
from qwen3lab.model.packed import part_names
from qwen3lab.quant.apply import quantize_linear

TINY = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, vocab_size=4096)


@pytest.fixture(scope="module")
def folder(scratch):
    return str(save_reference(scratch("fuse"), "qwen3", **TINY)[0])


class Parts(nn.Module):
    """A packed projection computed as its parts' own products, concatenated."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)


def _separate(model, folder: str, quantization) -> None:
    """Swap every packed projection for its parts, each a layer of the same layout made from the checkpoint's
    own tensor for that part."""
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    for name, module in list(model.named_modules()):
        if not isinstance(module, Linear) or len(module.output_sizes) == 1:
            continue
        parts = []
        for hf in part_names(name):
            lin = nn.Linear(module.in_features, 1, bias=False)
            lin.weight = nn.Parameter(tensors[f"{hf}.weight"].bfloat16(), requires_grad=False)
            m = module.method
            if quantization is None:
                part = Linear(lin.in_features, lin.weight.shape[0], False, type(m)())
                part.load_weight("weight", lin.weight.detach())
            else:
                method = type(m)(from_float=True) if quantization == "int8" else type(m)(m.group_size, from_float=True)
                part = quantize_linear(lin, quantization, method=method)
            parts.append(part)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, Parts(parts))


@pytest.mark.parametrize("quantization", [None, "int8", "int4"])
@pytest.mark.parametrize("tokens", [3, 70])
def test_fused_equals_separate(folder, quantization, tokens):
    fused = LLM(folder, dtype="bfloat16", quantization=quantization, kv_cache_memory_gb=0.01)
    layer = fused.model.model.layers[0]
    assert "qkv_proj" in layer.self_attn._modules and "gate_up_proj" in layer.mlp._modules
    cfg = fused.config
    ids = torch.randint(0, 4096, (tokens,), generator=torch.Generator().manual_seed(tokens))
    meta = AttentionMetadata.build([tokens], [tokens], cfg.layer_types, cfg.sliding_window)
    with torch.inference_mode():
        a = fused.model.compute_logits(fused.model(ids, meta))
        _separate(fused.model, folder, quantization)
        assert isinstance(fused.model.model.layers[0].self_attn.qkv_proj, Parts)
        b = fused.model.compute_logits(fused.model(ids, meta))
    if kernels.compiled() is not None and tokens <= kernels.MAX_ROWS:
        # Row-wise kernels: each output row is computed the same way whatever rows sit beside it.
        assert torch.equal(a, b)
    else:  # a BLAS GEMM may block a wider matrix differently
        assert ((a - b).abs().max() / b.abs().max()) < 2e-2


def test_fusing_returns_the_checkpoint_pages(tmp_path):
    """The parts' memory-mapped pages leave this process once stacked (they made RSS 1.45x the weights)."""
    from safetensors.torch import load_file, save_file

    from qwen3lab.memory import release_file_pages

    def resident_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    save_file({"a": torch.randn(4096, 4096), "b": torch.randn(1024)}, str(tmp_path / "w.safetensors"))
    mapped = load_file(str(tmp_path / "w.safetensors"))  # views of a file mapping
    before = resident_mb()
    total = float(mapped["a"].sum())  # reads every page: 64 MB become resident
    assert resident_mb() - before > 48
    fused = mapped["a"].clone()
    released = release_file_pages([mapped["a"]])
    assert released > 60 * 2**20 and resident_mb() - before < 80  # only the copy remains
    assert float(fused.sum()) == total and float(mapped["a"].sum()) == total  # the file still reads back
    assert release_file_pages([torch.randn(4096, 4096)]) == 0  # anonymous memory is never touched
