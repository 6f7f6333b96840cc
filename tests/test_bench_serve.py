"""`qwen3lab bench serve`: its statistics from recorded chunk times, and a real run against our server alone.

The peer (llama_cpp.server) is not needed: the end-to-end test starts `qwen3lab serve` as a
subprocess on a tiny random checkpoint and drives it with two concurrent streaming clients.
"""

from __future__ import annotations

import json

import pytest
from checkpoints import save_reference

from qwen3lab.bench.load import RequestRecord, percentile, summarize
from qwen3lab.bench.serving import run_serve_bench


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_summary_from_chunk_times():
    # Two requests over 1 s of wall time: 4 tokens in 4 chunks, and 4 tokens in 3 chunks (one held 2).
    a = RequestRecord(start=0.0, chunk_times=[0.1, 0.2, 0.3, 0.4], end=0.45, tokens=4, finish_reason="length")
    b = RequestRecord(start=0.2, chunk_times=[0.5, 0.7, 0.9], end=1.0, tokens=4, finish_reason="length")
    failed = RequestRecord(start=0.3, end=0.3, error="ConnectError: refused")
    s = summarize([a, b, failed], max_tokens=4)
    assert (s["requests"], s["failed"], s["output_tokens"], s["short_requests"]) == (3, 1, 8, 0)
    assert s["duration_s"] == pytest.approx(1.0)
    assert s["output_tok_s"] == pytest.approx(8.0) and s["req_s"] == pytest.approx(2.0)
    assert s["ttft_p50_ms"] == pytest.approx(200.0)  # TTFTs 100 and 300 ms
    assert s["itl_p50_ms"] == pytest.approx(100.0)  # gaps 100, 100, 100, 200, 200 ms
    assert s["itl_p99_ms"] == pytest.approx(200.0)
    assert s["tpot_p50_ms"] == pytest.approx(((300 / 3) + (400 / 3)) / 2)  # a: 100 ms, b: 133 ms per token
    assert s["tokens_per_chunk"] == pytest.approx(8 / 7)
    short = summarize([RequestRecord(start=0.0, chunk_times=[0.1, 0.2], end=0.2, tokens=2)], max_tokens=4)
    assert short["short_requests"] == 1


def test_bench_serve_against_our_server_alone(scratch):
    folder = scratch("tiny-qwen3") / "ckpt"
    save_reference(folder, "qwen3", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    out = folder.parent / "bench_serve.json"
    report = run_serve_bench(str(folder), peers=(), concurrency=(2,), max_tokens=6, rounds=2, threads=1, ctx=256,
                             kv_cache_gb=0.01, out=str(out))
    (row,) = report["rows"]
    assert row["engine"] == "qwen3lab" and row["concurrency"] == 2
    assert (row["requests"], row["failed"], row["output_tokens"], row["short_requests"]) == (4, 0, 24, 0)
    assert row["output_tok_s"] > 0 and 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
    assert row["itl_p50_ms"] <= row["itl_p99_ms"]
    assert json.loads(out.read_text())["rows"][0]["output_tokens"] == 24
