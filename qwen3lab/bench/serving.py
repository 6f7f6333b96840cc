"""``qwen3lab bench serve``: our HTTP server next to llama.cpp's on the same GGUF, under concurrent streaming load.

Each server runs alone as a subprocess on a free loopback port (ours first, then llama-cpp-python's
``llama_cpp.server``), with the same thread count. At each concurrency level, that many streaming
clients send the same fixed prompts (greedy, exactly ``max_tokens`` tokens each); every row has
throughput, TTFT, inter-token latency and, for the peer, the ratio ours / peer. Results also go to
a JSON file.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from .load import run_level, summarize
from .report import write_report
from .servers import Server, free_port, llama_command, llama_server_missing, ours_command

RATIO_KEYS = ["output_tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms"]
NOTES = [
    "ratio = ours / llama.cpp: above 1 is better for tok/s and req/s, below 1 is better for latencies",
    "llama_cpp.server runs one request at a time (one lock around the model, no batching); concurrent "
    "clients queue (started with --interrupt_requests False so queued requests do not cut the running "
    "stream), so its throughput stays flat and its TTFT grows with concurrency",
    "ITL: gaps between SSE chunks that carry text; a chunk may hold more than one token (incremental "
    "detokenization holds back partial characters), so TPOT = (last - first chunk) / (tokens - 1) per "
    "request is also given",
    "both servers reuse KV for repeated prompt prefixes (ours: prefix cache; llama.cpp: common prefix "
    "with the previous request)",
]


def _measure(name: str, server: Server, concurrency: tuple[int, ...], rounds: int, max_tokens: int) -> list[dict]:
    rows = []
    with server:
        print(f"[bench] {name} ready at {server.url}; warm-up ...", file=sys.stderr, flush=True)
        run_level(server.url, server.model_id, 1, 1, 8)
        for c in concurrency:
            print(f"[bench] {name}: {c} concurrent clients x {rounds} requests ...", file=sys.stderr, flush=True)
            records = run_level(server.url, server.model_id, c, c * rounds, max_tokens)
            # the 1-minute load average after the level: on a shared machine, the figures' context
            row = {"engine": name, "concurrency": c, **summarize(records, max_tokens),
                   "load_average": os.getloadavg()[0]}
            if errors := [r.error for r in records if r.error]:
                row["error"] = errors[0]
            rows.append(row)
    return rows


def run_serve_bench(model: str | None = None, peers: tuple[str, ...] = ("llama.cpp",),
                    concurrency: tuple[int, ...] = (1, 4, 16), max_tokens: int = 64, rounds: int = 2,
                    threads: int = 2, ctx: int = 2048, kv_cache_gb: float = 0.5,
                    out: str | None = "bench_serve.json") -> dict:
    if model is None:
        from ..weights.default_model import smollm2_gguf_path

        model = str(smollm2_gguf_path())
    if peers and not (model.endswith(".gguf") and Path(model).is_file()):
        raise ValueError(f"--model {model}: llama.cpp needs a local .gguf file, the same one for both servers "
                         "(or --peers '' to measure ours alone)")
    if min(concurrency, default=0) < 1 or max_tokens < 2 or rounds < 1 or threads < 1:
        raise ValueError("concurrency levels, rounds and threads must be >= 1 and max_tokens >= 2")
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": threads, "load_average_at_start": os.getloadavg()[0]},
              "model": {"path": model},
              "settings": {"concurrency": list(concurrency), "requests_per_level": f"{rounds} x concurrency",
                           "max_tokens": max_tokens, "greedy": True, "ctx": ctx, "kv_cache_gb": kv_cache_gb,
                           "endpoint": "/v1/chat/completions (stream)"},
              "notes": list(NOTES), "rows": []}
    seqs = max(16, *concurrency)
    port = free_port()
    ours = _measure("qwen3lab", Server("qwen3lab", ours_command(model, port, seqs, ctx, kv_cache_gb), port, threads),
                    concurrency, rounds, max_tokens)
    report["rows"] += ours
    if "llama.cpp" in peers:
        if why := llama_server_missing():
            print(f"[bench] {why}; measured ours only", file=sys.stderr)
            report["notes"].append(why)
            report["rows"].append({"engine": "llama.cpp", "concurrency": None, "error": why})
        else:
            report["machine"]["llama_cpp_python"] = importlib.metadata.version("llama_cpp_python")
            port = free_port()
            peer = _measure("llama.cpp", Server("llama.cpp", llama_command(model, port, threads, ctx), port,
                                                threads), concurrency, rounds, max_tokens)
            for ours_row, row in zip(ours, peer):
                row["ours_over_peer"] = {k: ours_row[k] / row[k] for k in RATIO_KEYS
                                         if ours_row.get(k) is not None and row.get(k)}
            report["rows"] += peer
    print_table(report)
    write_report(report, out)
    return report


def _ratio(v: float) -> str:
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def print_table(report: dict) -> None:
    m, s = report["machine"], report["settings"]
    print(f"{Path(report['model']['path']).name} | {m['threads']} threads | {s['max_tokens']} tokens per request, "
          f"greedy | {s['requests_per_level']} requests per level | load average {m['load_average_at_start']:.1f}")
    head = (f"{'engine':<12}{'conc':>5}{'reqs':>5}{'tok/s':>8}{'req/s':>8}{'TTFT p50':>10}{'p99':>8}"
            f"{'ITL p50':>9}{'p99':>8}{'TPOT p50':>10}{'load':>6}")
    print(head)
    print("-" * len(head))

    def num(v, fmt):
        return "-" if v is None else fmt.format(v)

    for r in report["rows"]:
        if r.get("concurrency") is None or "output_tok_s" not in r:
            print(f"{r['engine']:<12}{num(r.get('concurrency'), '{}'):>5}  error: {r.get('error', 'no result')}")
            continue
        print(f"{r['engine']:<12}{r['concurrency']:>5}{r['requests']:>5}{r['output_tok_s']:>8.1f}{r['req_s']:>8.2f}"
              f"{num(r['ttft_p50_ms'], '{:.0f}'):>10}{num(r['ttft_p99_ms'], '{:.0f}'):>8}"
              f"{num(r['itl_p50_ms'], '{:.1f}'):>9}{num(r['itl_p99_ms'], '{:.1f}'):>8}"
              f"{num(r['tpot_p50_ms'], '{:.1f}'):>10}{r['load_average']:>6.1f}")
        if r.get("failed") or r.get("short_requests"):
            print(f"    {r['failed']} failed, {r['short_requests']} with fewer than {s['max_tokens']} tokens"
                  + (f"; first error: {r['error']}" if r.get("error") else ""))
        if ratio := r.get("ours_over_peer"):
            cells = [_ratio(ratio[k]) if k in ratio else "-" for k in RATIO_KEYS]
            print(f"{'  ours/peer':<22}{cells[0]:>8}{cells[1]:>8}{cells[2]:>10}{cells[3]:>8}{cells[4]:>9}"
                  f"{cells[5]:>8}{cells[6]:>10}")
    print("tok/s and req/s: all clients together over the level's wall time; latencies in ms; load: the "
          "machine's 1-minute load average after the level; ours/peer: above 1 is better for tok/s and req/s, "
          "below 1 for latencies")
    if any(r["engine"] == "llama.cpp" and "output_tok_s" in r for r in report["rows"]):
        print("llama_cpp.server serves one request at a time (no batching): concurrent clients queue behind it")
