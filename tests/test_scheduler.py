"""Scheduler and block manager without a model: batching, chunking, prefix caching, preemption."""

from qwen3lab.engine.block_manager import BlockManager
from qwen3lab.engine.scheduler import Scheduler
from qwen3lab.engine.sequence import Sequence, Status
from qwen3lab.sampling import SamplingParams


def seq(tokens, rid="r"):
    return Sequence(rid, 0, list(tokens), SamplingParams(max_tokens=100), 100)


def run_step(sched, fake_token=7):
    """What the engine does after the model ran: advance, then append a token to sampling rows."""
    batch = sched.schedule()
    sampled = [s for i, s in enumerate(batch.seqs) if batch.samples(i)]
    sched.step_done(batch)
    for s in sampled:
        s.output_token_ids.append(fake_token)
    return batch


def test_chunked_prefill_shares_steps_with_decodes():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=8)
    a = seq(range(5))
    sched.add(a)
    batch = run_step(sched)
    assert batch.num_new_tokens == [5] and a.output_token_ids == [7]
    b = seq(range(100, 120))
    sched.add(b)
    batch = run_step(sched)  # a decodes (1 token), b gets the remaining 7 of the budget
    assert [s is a for s in batch.seqs] == [True, False] and batch.num_new_tokens == [1, 7]
    assert not batch.samples(1) and b.output_token_ids == []
    run_step(sched)
    batch = run_step(sched)
    assert batch.num_new_tokens == [1, 6] and b.output_token_ids == [7]  # 7 + 7 + 6 = 20 prompt tokens


def test_prefix_cache_reuses_full_blocks_and_counts_hits():
    bm = BlockManager(32, 4)
    sched = Scheduler(bm, max_num_batched_tokens=64)
    first = seq(list(range(10)))
    sched.add(first)
    run_step(sched)
    shared_blocks = first.block_table[:2]
    sched.release(first)
    second = seq(list(range(9)) + [99, 98])  # shares 9 tokens = two full blocks of 4
    sched.add(second)
    batch = run_step(sched)
    assert second.block_table[:2] == shared_blocks
    assert batch.num_new_tokens == [3] and bm.hit_tokens == 8
    # A prompt that is exactly cached still computes its last token.
    third = seq(list(range(8)))
    sched.add(third)
    batch = run_step(sched)
    assert batch.num_new_tokens[-1] == 4 and third.block_table[0] == shared_blocks[0]


def test_evicts_least_recently_freed_block():
    bm = BlockManager(4, 2)
    a, b = seq([1, 2, 3]), seq([4, 5, 6])
    for s in (a, b):
        bm.admit(s)
        bm.allocate(s, 3)
        s.num_computed = 3
        bm.register(s)
    bm.release(a)
    bm.release(b)
    c = seq([9, 9, 9, 9, 9])
    bm.admit(c)
    assert bm.allocate(c, 5) and len(c.block_table) == 3
    # a's blocks went back first, so a's prefix is gone and b's full block survives.
    d = seq([4, 5, 6])
    assert bm.admit(d) == 2
    e = seq([1, 2, 3])
    assert bm.admit(e) == 0


def test_preemption_when_pool_runs_out_and_recompute():
    bm = BlockManager(4, 2)  # 8 token slots
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=16)
    a, b = seq([1, 2, 3]), seq([4, 5, 6])
    sched.add(a)
    sched.add(b)
    run_step(sched)  # both prefilled: 2 blocks each, pool full
    assert bm.num_free == 0
    run_step(sched)  # position 3 still fits the second block
    assert sched.num_preemptions == 0
    run_step(sched)  # position 4 needs a third block: b (admitted last) is preempted for a
    assert b.status is Status.WAITING and b.num_computed == 0 and sched.num_preemptions == 1
    assert a.status is Status.RUNNING and len(a.output_token_ids) == 3
    sched.release(a)
    batch = run_step(sched)  # b comes back: its first block is still cached, the rest is recomputed
    assert batch.seqs == [b] and batch.num_new_tokens == [3] and b.output_token_ids == [7, 7, 7]


def test_max_num_seqs_and_release_frees_blocks():
    bm = BlockManager(64, 4)
    sched = Scheduler(bm, max_num_seqs=2)
    seqs = [seq(range(i, i + 6), rid=str(i)) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch = run_step(sched)
    assert len(batch.seqs) == 2 and seqs[2].status is Status.WAITING
    sched.release(seqs[0])
    assert seqs[0].block_table == []
    batch = run_step(sched)
    assert seqs[2] in batch.seqs
    for s in seqs[1:]:
        sched.release(s)
    assert bm.num_free == 64 and not sched.has_unfinished()


def test_kv_pool_takes_memory_only_where_written():
    """A worst-case-sized pool must not be resident up front (torch.zeros would write all of it)."""
    import types

    import torch

    from qwen3lab.engine.kv_cache import PagedKVCache

    def rss_gb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**30

    cfg = types.SimpleNamespace(num_hidden_layers=36, num_key_value_heads=8, head_dim=128)
    before = rss_gb()
    cache = PagedKVCache(cfg, num_blocks=500, block_size=16, dtype=torch.bfloat16)  # 1.1 GiB
    assert cache.nbytes > 2**30 and rss_gb() - before < 0.1
    assert cache.k[7].abs().max() == 0 and cache.v[35].abs().max() == 0  # reads as zeros
    cache.write(3, torch.tensor([17]), torch.ones(1, 8, 128), torch.full((1, 8, 128), 2.0))
    assert cache.k[3][17].sum() == 1024 and cache.v[3][17].sum() == 2048 and cache.k[4][17].sum() == 0


def test_freed_blocks_without_a_prefix_key_give_their_memory_back():
    """Blocks nobody can reuse (no prefix-cache key) are discarded when freed: their pages leave the
    process and read as zeros, while neighbouring and still-cached blocks keep their keys and values."""
    import types

    import torch

    from qwen3lab.engine.kv_cache import PagedKVCache

    def rss_gb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**30

    cfg = types.SimpleNamespace(num_hidden_layers=36, num_key_value_heads=8, head_dim=128)
    cache = PagedKVCache(cfg, num_blocks=200, block_size=16, dtype=torch.bfloat16)
    bm = BlockManager(200, 16, enable_prefix_caching=True)
    discarded = []
    bm.on_discard = lambda blocks: (discarded.extend(blocks), cache.discard(blocks))
    s = seq(list(range(100)))  # 6 full blocks (keyed once computed) and a partial one
    assert bm.allocate(s, 512)
    slots = torch.tensor([b * 16 + i for b in s.block_table for i in range(16)])
    before = rss_gb()
    for layer in range(36):
        cache.write(layer, slots, torch.ones(len(slots), 8, 128), torch.ones(len(slots), 8, 128))
    peak = rss_gb()
    assert peak - before > 0.06  # 512 tokens x 36 layers x keys and values x 2 KB = 72 MB
    s.num_computed = 100
    bm.register(s)
    keyed, table = s.block_table[:6], list(s.block_table)
    bm.release(s)
    assert sorted(discarded) == sorted(table[6:])
    assert peak - rss_gb() > 0.05  # 26 of the 32 blocks went back
    for b in table[6:]:
        assert cache.k[0][b * 16: b * 16 + 16].abs().max() == 0 and cache.v[35][b * 16: b * 16 + 16].abs().max() == 0
    for b in keyed:  # the prefix cache still holds these
        assert cache.k[20][b * 16: b * 16 + 16].min() == 1 and cache.v[35][b * 16: b * 16 + 16].min() == 1
