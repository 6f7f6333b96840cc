"""``qwen3lab bench``: our engine and its peers on the same random-weight Qwen3 checkpoint, one run.

For each precision (bf16, int8, int4) our engine is measured, then the peer a user would pick
instead at that precision (transformers bf16; llama.cpp bf16 / Q8_0 / Q4_0 on GGUF files exported
from the same weights), each in a fresh process. Every row prints the ratio ours / peer. Results
also go to a JSON file.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .checkpoint import random_checkpoint
from .report import write_report

PEERS = {"bf16": [("transformers", None), ("llama.cpp", "bf16")], "int8": [("llama.cpp", "q8_0")],
         "int4": [("llama.cpp", "q4_0")]}
METRICS = ["prefill_tok_s", "decode_tok_s", "decode_b4_tok_s", "decode_b8_tok_s"]


def _worker(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "qwen3lab.bench.measure", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gguf(folder: Path, outtype: str) -> Path:
    path = folder.parent / f"{folder.name}.{outtype}.gguf"
    if not path.exists():
        from ..weights.gguf_export import export_gguf

        tmp = path.with_name(path.name + ".tmp")
        export_gguf(folder, tmp, outtype)
        tmp.rename(path)
    return path


def _quantized(folder: Path, mode: str) -> Path:
    """A cached quantized copy, so that load time and peak memory are those of a quantized checkpoint."""
    out = folder.parent / f"{folder.name}-{mode}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        cmd = [sys.executable, "-m", "qwen3lab.cli", "quantize", "--model", str(folder), "--out", str(tmp),
               "--mode", mode]
        subprocess.run(cmd, check=True, capture_output=True)
        tmp.rename(out)
    return out


def run_bench(size: str = "4b", layers: int | None = None, precisions: tuple[str, ...] = ("bf16", "int8", "int4"),
              peers: tuple[str, ...] = ("transformers", "llama.cpp"), prompt_len: int = 512, decode_tokens: int = 128,
              batches: tuple[int, ...] = (4, 8), batch_tokens: int = 32, verify_k: int = 0,
              threads: int | None = None, out: str | None = "bench_results.json") -> dict:
    threads = threads or torch.get_num_threads()
    folder = random_checkpoint(size, layers)
    common = ["--prompt-len", str(prompt_len), "--decode-tokens", str(decode_tokens), "--threads", str(threads)]
    batch_args = ["--batches", ",".join(map(str, batches)), "--batch-tokens", str(batch_tokens)]
    bandwidth = _worker(["bandwidth", "--threads", str(threads)]).get("read_gb_s")
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                          "read_bandwidth_gb_s": bandwidth, "torch": torch.__version__},
              "model": {"size": size, "checkpoint": str(folder)}, "rows": []}
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    for prec in precisions:
        print(f"[bench] ours {prec} ...", file=sys.stderr, flush=True)
        path = folder if prec == "bf16" else _quantized(folder, prec)
        ours = _worker(["ours", str(path), *common, *batch_args,
                        *(["--verify-k", str(verify_k)] if verify_k and prec == "bf16" else [])])
        if "decode_tok_s" in ours and bandwidth:
            ours["bandwidth_fraction"] = ours["weight_bytes_per_token"] * ours["decode_tok_s"] / 1e9 / bandwidth
        report["rows"].append({"engine": "qwen3lab", "precision": prec, **ours})
        for peer, fmt in PEERS[prec]:
            if peer not in peers:
                continue
            print(f"[bench] {peer} {fmt or prec} ...", file=sys.stderr, flush=True)
            if peer == "transformers":
                res = _worker(["transformers", str(folder), *common, *batch_args])
            elif not have_llama:
                res = {"error": "llama-cpp-python is not installed: pip install '.[bench]'"}
            else:
                res = _worker(["llama.cpp", str(_gguf(folder, fmt)), *common])
            ratios = {m: ours[m] / res[m] for m in METRICS if m in ours and res.get(m)}
            report["rows"].append({"engine": peer, "precision": fmt or prec, **res, "ours_over_peer": ratios})
    print_table(report)
    write_report(report, out)
    return report


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"Qwen3-{report['model']['size']} random weights | {m['threads']} threads | "
          f"machine read bandwidth {m['read_bandwidth_gb_s'] or float('nan'):.1f} GB/s")
    head = f"{'engine':<13}{'prec':<6}{'prefill':>9}{'decode':>9}{'b4':>8}{'b8':>8}{'RSS GB':>8}{'dRSS':>6}{'/W':>6}{'bRSS':>6}{'BW %':>7}  ours/peer (decode, prefill)"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['engine']:<13}{r['precision']:<6}  error: {r['error']}")
            continue

        def f(key, width, fmt="{:.2f}"):
            return (fmt.format(r[key]) if r.get(key) is not None else "-").rjust(width)

        ratio = r.get("ours_over_peer", {})
        ratio_s = f"{ratio['decode_tok_s']:.2f}x, {ratio['prefill_tok_s']:.2f}x" if ratio else ""
        bw = f"{100 * r['bandwidth_fraction']:.0f}" if r.get("bandwidth_fraction") else "-"
        per_w = (f"{r['decode_peak_rss_gb'] * 2**30 / r['weight_bytes_per_token']:.2f}"
                 if r.get("decode_peak_rss_gb") and r.get("weight_bytes_per_token") else "-")
        print(f"{r['engine']:<13}{r['precision']:<6}{f('prefill_tok_s', 9, '{:.1f}')}{f('decode_tok_s', 9)}"
              f"{f('decode_b4_tok_s', 8)}{f('decode_b8_tok_s', 8)}{f('peak_rss_gb', 8, '{:.1f}')}{f('decode_peak_rss_gb', 6, '{:.1f}')}{per_w:>6}"
              f"{f('batch_peak_rss_gb', 6, '{:.1f}')}{bw:>7}  {ratio_s}")
        if r.get("verify_cost"):
            cost = ", ".join(f"k={k}: {v:.2f}" for k, v in r["verify_cost"].items())
            print(f"    verify k+1 tokens / decode 1 token: {cost}")
    print("tok/s; decode = batch 1; b4/b8 = aggregate decode of 4/8 sequences; RSS = the process's peak (load "
          "included), dRSS = peak while decoding at batch 1, /W = dRSS / weight bytes, bRSS = peak during the "
          "batch runs (their prompts included); BW % = weight bytes per decode "
          "step x decode rate / measured read bandwidth")
