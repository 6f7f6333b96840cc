"""Sliding layers with a pool of their own: blocks that left the window go back, prefix hits cut back to
what the sliding pool still holds, and generation through both pools equals transformers with the
same masks."""

from __future__ import annotations

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.engine.block_manager import NULL_BLOCK
from qwen3lab.engine.hybrid_blocks import HybridBlockManager
from qwen3lab.engine.sequence import Sequence
from test_long_context import SMALL, _masked_ref


def _seq(tokens, rid="r"):
    return Sequence(rid, 0, list(tokens), SamplingParams(max_tokens=10), 10)


def _compute(bm, s, upto):
    assert bm.allocate(s, upto)
    s.num_computed = upto
    bm.register(s)
    bm.trim(s)


def test_sliding_blocks_leave_the_window_and_hits_cut_back():
    bs, window, sinks = 4, 10, 2
    bm = HybridBlockManager(full_blocks=64, sliding_blocks=12, block_size=bs, window=window, sinks=sinks)
    a = _seq(range(41))
    for upto in (8, 16, 24, 32, 40):  # chunks of 8
        _compute(bm, a, upto)
        live = [i for i, b in enumerate(a.sliding_table) if b != NULL_BLOCK]
        # A query at position >= upto reads keys > upto - window and the sinks (block 0).
        assert live == [0] + [i for i in range(1, upto // bs) if (i + 1) * bs > upto - window + 1]
    assert len(a.block_table) == 10 and bm.full.num_free == 54
    assert bm.sliding.num_free == 11 - 4  # the sink block and blocks 7..9 are held
    bm.release(a)
    # The same prompt again: every block is still cached (given-back sliding blocks keep their keys).
    b = _seq(range(41), "b")
    assert bm.admit(b) == 40 and b.sliding_table[1] == NULL_BLOCK and b.sliding_table[9] != NULL_BLOCK
    bm.release(b)
    # Another prompt takes the whole sliding pool, evicting a's blocks; a's prefix is then cut back to
    # what the sliding pool can serve (here nothing past the evicted window).
    c = _seq(range(100, 144), "c")
    assert bm.allocate(c, 44)
    bm.release(c)
    d = _seq(range(41), "d")
    assert bm.admit(d) == 0 and d.block_table == [] and bm.hit_tokens == 40


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_reference(tmp_path_factory.mktemp("hkv"), "qwen3", vocab_size=4096, num_hidden_layers=3, **SMALL)


@torch.inference_mode()
def test_generation_through_both_pools_equals_transformers(model):
    folder, ref = model
    spec = {"sliding_window": 20, "full_layers": [1], "sink_tokens": 3}
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, max_num_batched_tokens=32, attention=spec)
    engine = llm.engine
    assert isinstance(engine.blocks, HybridBlockManager)
    ids = torch.randint(0, 4096, (150,), generator=torch.Generator().manual_seed(8)).tolist()
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    rid = engine.add_request(ids, params)
    most_sliding = 0
    while not engine.is_finished(rid):
        engine.step()
        used = engine.blocks.sliding.capacity - engine.blocks.sliding.num_free
        most_sliding = max(most_sliding, used)
    out = engine.pop(rid).outputs[0].token_ids
    # 1 sink block + the window's blocks (20 keys over 16-token blocks: 2, or 3 when straddling) + one
    # 32-token chunk (2 or 3 blocks): the sliding layers never held more, the full layer all 180 tokens.
    assert most_sliding <= 7
    seq = list(ids)
    for _ in range(30):
        seq.append(int(_masked_ref(ref, seq, 20, 3, {1}, None)[-1].argmax()))
    assert out == seq[150:]
    # Again, from the prefix cache of both pools.
    again = llm.generate([ids], params)[0]
    assert again.outputs[0].token_ids == seq[150:] and engine.blocks.hit_tokens >= 144
    # KV bytes: 1 of 3 layers holds the context, 2 only their window.
    assert engine.cache.block_bytes(1) == 2 * engine.cache.block_bytes(0)
