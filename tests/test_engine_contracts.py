"""The engine's contracts: settings written once, speculative settings validated, stats that match
the engine they describe, and draft state that one step hands to the next."""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.cli.main import build_parser
from qwen3lab.engine.config import EngineConfig
from qwen3lab.engine.kv_cache import bytes_per_block, pool_num_blocks
from qwen3lab.engine.sequence import SpecDraft
from qwen3lab.engine.stats import EngineStats
from qwen3lab.serve.metrics import Metrics
from qwen3lab.speculative import Drafter, SpeculativeConfig

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


@pytest.fixture(scope="module")
def folder(scratch):
    return str(save_reference(scratch("contracts"), "qwen3", **TINY)[0])


def test_llm_and_serve_defaults_are_the_engine_config_defaults():
    params = inspect.signature(LLM.__init__).parameters
    args = build_parser().parse_args(["serve"])
    for f in dataclasses.fields(EngineConfig):
        if f.name in params:
            assert params[f.name].default == f.default, f.name
        if hasattr(args, f.name):
            assert getattr(args, f.name) == f.default, f.name
    assert {"max_num_seqs", "max_model_len", "max_num_batched_tokens", "kv_cache_memory_gb"} <= set(vars(args))


def test_speculative_config_names_the_unknown_key_and_converts_the_dict_form():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'num_token'.*known keys: method, model, num_tokens"):
        SpeculativeConfig.of({"method": "ngram", "num_token": 4})
    with pytest.raises(ValueError, match="method None is not supported"):
        SpeculativeConfig.of({"num_tokens": 4})
    with pytest.raises(ValueError, match="speculative topk must be >= 1, got 0"):
        SpeculativeConfig.of({"method": "ngram", "topk": 0})
    with pytest.raises(ValueError, match="speculative num_tokens must be a number, got 'four'"):
        SpeculativeConfig.of({"method": "ngram", "num_tokens": "four"})
    spec = SpeculativeConfig.of({"method": "eagle3", "model": "d", "num_tokens": "6", "topk": 2.0})
    assert (spec.num_tokens, spec.topk, spec.kv_cache_memory_gb) == (6, 2, 0.5)  # eagle3's own pool default
    assert SpeculativeConfig.of({"method": "draft", "model": "d"}).kv_cache_memory_gb == 1.0
    assert SpeculativeConfig.of(spec) is spec
    assert SpeculativeConfig.of(None) is None and SpeculativeConfig.of({}) is None


def test_bad_speculative_key_fails_serve_before_loading(capsys):
    from qwen3lab.cli import main

    assert main(["serve", "--model", "no/such/model", "--speculative", '{"method": "ngram", "k": 4}']) == 2
    assert "unknown key(s) 'k'" in capsys.readouterr().err


def test_spec_draft_clear_and_truncate_leave_old_lists_intact():
    d = SpecDraft([5, 6, 7], torch.eye(3), [-1, 0, 0])
    tokens = d.tokens
    d.truncate(2)
    assert (d.tokens, d.parents, d.probs.shape[0], d.tree) == ([5, 6], [-1, 0], 2, (-1, 0))
    d.clear()
    assert tokens == [5, 6, 7] and (d.tokens, d.probs, d.parents, d.tree) == ([], None, None, None)


def test_kv_pool_sizing_caps_by_memory_and_by_need():
    cfg = types.SimpleNamespace(num_hidden_layers=2, num_key_value_heads=2, head_dim=16)
    per_block = bytes_per_block(cfg, 16, torch.float32)
    assert pool_num_blocks(cfg, 16, torch.float32, 1.0, 2, 100) == 13  # ceil(2 x 100 / 16): memory is plenty
    assert pool_num_blocks(cfg, 16, torch.float32, 5 * per_block / 2**30, 2, 100) == 5
    assert pool_num_blocks(cfg, 16, torch.float32, 1e-12, 2, 100) == 1


def test_stats_follow_a_running_engine(folder):
    llm = LLM(folder, dtype="float32", max_num_seqs=2, kv_cache_memory_gb=0.01,
              speculative={"method": "draft", "model": folder, "num_tokens": 3})  # drafts every decode step
    engine = llm.engine
    assert isinstance(engine.drafter, Drafter) and engine.drafter.hidden_layers == ()
    idle = engine.stats()
    assert (idle.num_waiting, idle.num_running, idle.kv_blocks_used) == (0, 0, 0)
    assert idle.kv_blocks_total == engine.cache.num_blocks and idle.lora_adapters == ()
    prompt = list(range(100, 140))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ids = [engine.add_request(prompt, params) for _ in range(3)]
    assert engine.stats().num_waiting == 3
    engine.step()
    s = engine.stats()
    assert (s.num_running, s.num_waiting) == (2, 1)
    assert s.kv_blocks_used == len({b for q in engine.scheduler.running for b in q.block_table}) > 0
    assert s.kv_cache_usage == engine.blocks.usage
    while engine.has_unfinished():
        engine.step()
    for r in ids:
        engine.pop(r)
    done = engine.stats()
    assert (done.num_running, done.num_waiting, done.kv_blocks_used) == (0, 0, 0)
    assert done.prefix_cache_hit_tokens == engine.blocks.hit_tokens > 0  # the later copies hit the first's blocks
    assert done.prefix_cache_queried_tokens == 3 * len(prompt)
    assert (done.spec_steps, done.spec_drafted, done.spec_accepted) == \
        (engine.spec_stats["steps"], engine.spec_stats["drafted"], engine.spec_stats["accepted"])
    assert done.spec_steps > 0


def test_metrics_render_lora_adapters_from_stats():
    stats = EngineStats(num_waiting=1, num_running=2, num_preemptions=0, kv_blocks_total=8, kv_blocks_free=6,
                        prefix_cache_queried_tokens=0, prefix_cache_hit_tokens=0, spec_steps=0, spec_drafted=0,
                        spec_accepted=0, lora_adapters=("a", "b"), running_lora_adapters=("a", "b"),
                        waiting_lora_adapters=("b",))
    text = Metrics("m").render(stats)
    assert 'qwen3lab:kv_cache_usage_perc{model_name="m"} 0.25' in text
    assert 'lora_requests_info{model_name="m",running_lora_adapters="a,b",waiting_lora_adapters="b",' \
           'max_lora="2"} 2' in text
    assert "lora_requests_info" not in Metrics("m").render(dataclasses.replace(stats, lora_adapters=()))
