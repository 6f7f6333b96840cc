"""The server with speculative decoding in its continuous batches (real uvicorn, official openai client)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.serve import ServerConfig, build_app
from serve_fixtures import KEY, ServerThread, raw


@pytest.mark.parametrize("tree", [{}, {"topk": 3, "num_tokens": 6}])
def test_speculative_server_under_concurrent_load_matches_plain_greedy(tmp_path, tree):
    """n-gram speculation (chains, and token trees) inside the server's continuous batches: every greedy
    answer equals plain decoding, and the drafting shows up in /metrics."""
    folder = save_reference(tmp_path, "qwen3", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16)[0]
    reference = LLM(str(folder), dtype="float32", max_model_len=2048, kv_cache_memory_gb=0.25)
    llm = LLM(str(folder), dtype="float32", max_model_len=2048, kv_cache_memory_gb=0.25, max_num_seqs=4,
              speculative={"method": "ngram", "num_tokens": 4, **tree})
    config = ServerConfig(served_model_names=["tiny"], api_key=KEY, max_body_bytes=2**20)
    prompts = [f"item {i}: one two three four one two five six one two three four one two" for i in range(8)]
    want = [o.text for o in reference.generate(prompts, SamplingParams(max_tokens=24, temperature=0,
                                                                      ignore_eos=True))]
    with ServerThread(build_app(llm, config)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

        def one(p):
            return c.completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0,
                                        extra_body={"ignore_eos": True}).choices[0].text

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, prompts))
        status, body = raw(s, "GET", "/metrics")
    assert got == want
    assert status == 200 and llm.engine.spec_stats["accepted"] > 0
    assert "spec_decode_num_accepted_tokens_total" in body.decode()
