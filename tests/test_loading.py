"""Checkpoint loading: sharded folders, and peak memory near the weights' size (tensors placed one by one)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from checkpoints import save_reference
from qwen3lab import LLM

MID = dict(num_hidden_layers=4, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
           num_key_value_heads=4, head_dim=64, max_position_embeddings=512, tie_word_embeddings=False)


def test_sharded_checkpoint_loads_the_same(tmp_path):
    folder, ref = save_reference(tmp_path / "one", "qwen3", vocab_size=151936, **MID)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="60MB")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "sharded" / f).write_bytes((folder / f).read_bytes())
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ids = list(range(100, 140))
    a = LLM(str(folder), dtype="float32").logits(ids)
    b = LLM(str(tmp_path / "sharded"), dtype="float32").logits(ids)
    assert torch.equal(a, b)


PROBE = """
import resource, sys, torch
torch.set_num_threads(1)
from qwen3lab.weights.loader import load_checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ckpt = load_checkpoint(sys.argv[1], torch.float32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = sum(p.numel() * p.element_size() for p in ckpt.model.parameters())
print(before * 1024, after * 1024, weights)
"""


def test_peak_memory_while_loading_stays_near_weight_size(tmp_path):
    folder, _ = save_reference(tmp_path / "m", "qwen3", vocab_size=151936, **MID)
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, check=True)
    before, after, weights = map(int, out.stdout.split())
    # Peak growth while loading: the weights plus at most one tensor in flight (the 311 MB embedding
    # here) and tokenizer/allocator slack; a loader that materialised a full second copy would need 2x.
    assert after - before < 1.45 * weights, (after - before, weights)


NO_COMPILER_PROBE = """
import sys, torch
from qwen3lab import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="bfloat16", quantization="int4")
llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
print(" ".join(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""


def test_loading_and_decoding_leave_the_compiler_stack_unimported(tmp_path):
    """torch._dynamo and sympy (900 modules, ~70 MB resident) have no part in loading or decoding;
    they came in through layer initialisation on the meta device and counted in decode memory."""
    folder, _ = save_reference(tmp_path / "m", "qwen3", num_hidden_layers=1, hidden_size=128, intermediate_size=256,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=512)
    out = subprocess.run([sys.executable, "-c", NO_COMPILER_PROBE, str(folder)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", out.stdout
