"""``qwen3lab bench longctx``: long-prompt prefill, KV memory and decode at the end of the prompt.

On a random-weight Qwen3 checkpoint (0.6B shapes by default), for each prompt length: ours with full
attention, ours with a hybrid layout (a quarter of the layers on full attention, evenly spaced, the
rest on a sliding window), transformers (bf16, SDPA, one forward over the prompt) and llama.cpp on
the same weights exported to GGUF, each in a fresh process at the same thread count. Prefill is the
wall time of the whole prompt (ours in engine chunks of ``--chunk`` tokens); KV is the cache bytes
the prompt occupies (ours: the blocks it holds in both pools, the sliding layers' pool keeping only
their window; transformers: its DynamicCache tensors; llama.cpp:
its context's KV buffer); decode is tok/s of greedy steps right after the prompt.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

from .report import write_report


def _ours(path: str, length: int, decode: int, chunk: int, attention: dict | None, kv_cache_dtype: str = "auto",
          quantization: str | None = None, rope_scaling: dict | None = None) -> dict:
    import resource

    from ..llm import LLM
    from ..sampling import SamplingParams
    from .measure import prompt_ids

    llm = LLM(path, dtype="bfloat16", max_model_len=length + decode + 16, max_num_batched_tokens=chunk,
              kv_cache_memory_gb=1.0 + length * 160 * 1024 / 2**30, attention=attention, enable_prefix_caching=False,
              kv_cache_dtype=kv_cache_dtype, quantization=quantization, rope_scaling=rope_scaling)
    llm.generate([prompt_ids(64, 0)], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
    engine = llm.engine
    rid = engine.add_request(prompt_ids(length, 1), SamplingParams(max_tokens=decode, temperature=0.0,
                                                                   ignore_eos=True))
    t0 = time.perf_counter()
    first, kv_bytes, chunks = None, 0.0, []
    while not engine.is_finished(rid):
        t = time.perf_counter()
        deltas = engine.step()
        if first is None:
            chunks.append(round(time.perf_counter() - t, 3))
        kv_bytes = max(kv_bytes, engine.kv_bytes_in_use())
        if first is None and any(d.token_ids for d in deltas):
            first = time.perf_counter()
    end = time.perf_counter()
    engine.pop(rid)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return dict(prefill_s=first - t0, decode_tok_s=(decode - 1) / (end - first), kv_gib=kv_bytes / 2**30,
                kv_bytes_per_token=kv_bytes / length, peak_rss_gib=rss, chunk_s=chunks)


def _transformers(path: str, length: int, decode: int) -> dict:
    from transformers import AutoModelForCausalLM, DynamicCache

    from .measure import prompt_ids

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        model(torch.tensor([prompt_ids(64, 0)]))
        cache = DynamicCache()
        t0 = time.perf_counter()
        out = model(torch.tensor([prompt_ids(length, 1)]), past_key_values=cache, use_cache=True)
        t1 = time.perf_counter()
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(decode - 1):
            out = model(tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return dict(prefill_s=t1 - t0, decode_tok_s=(decode - 1) / (t2 - t1), kv_gib=kv / 2**30)


def _llama_cpp(path: str, length: int, decode: int, threads: int) -> dict:
    from llama_cpp import Llama

    from .measure import prompt_ids

    llm = Llama(model_path=path, n_ctx=length + decode + 16, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    llm.eval(prompt_ids(64, 0))
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids(length, 1))
    t1 = time.perf_counter()
    for tok in prompt_ids(decode - 1, 5):
        llm.eval([tok])
    t2 = time.perf_counter()
    cfg = llm.metadata
    layers = int(cfg.get("qwen3.block_count", 0))
    kvh, d = int(cfg.get("qwen3.attention.head_count_kv", 0)), int(cfg.get("qwen3.attention.key_length", 128))
    return dict(prefill_s=t1 - t0, decode_tok_s=(decode - 1) / (t2 - t1),
                kv_gib=(length + decode) * layers * kvh * d * 2 * 2 / 2**30)


def _worker(args: list[str], timeout: float | None) -> dict:
    cmd = [sys.executable, "-m", "qwen3lab.bench.longctx", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over the {timeout:.0f} s limit"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


OURS = ("full", "hybrid", "hybrid-int8")


def run_longctx(size: str, lengths: tuple[int, ...], peers: tuple[str, ...], window: int, full_every: int,
                decode: int, chunk: int, threads: int, limit_s: float | None, out: str | None,
                ours: tuple[str, ...] = OURS, quantization: str | None = None, rope_scaling: str | None = None
                ) -> dict:
    from ..select_layers import evenly_spaced
    from .checkpoint import qwen3_config, random_checkpoint
    from .run import _gguf

    bad = sorted(set(ours) - set(OURS))
    if bad:
        raise ValueError(f"--ours: unknown variant(s) {', '.join(bad)}; choose among {', '.join(OURS)}")
    folder = random_checkpoint(size)
    n_layers = qwen3_config(size)["num_hidden_layers"]
    full = evenly_spaced(n_layers, max(1, n_layers // full_every))
    hybrid = {"sliding_window": window, "full_layers": full}
    report = {"size": size, "threads": threads, "window": window, "full_layers": full, "chunk": chunk,
              "decode_tokens": decode, "machine": platform.processor() or platform.machine(),
              "quantization": quantization, "rope_scaling": rope_scaling,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    common = ["--decode", str(decode), "--threads", str(threads)]
    extra = (["--quantization", quantization] if quantization else []) + (
        ["--rope-scaling", rope_scaling] if rope_scaling else [])
    variants = {"full": ("ours full", []),
                "hybrid": (f"ours hybrid {len(full)}/{n_layers}", ["--attention", json.dumps(hybrid)]),
                "hybrid-int8": (f"ours hybrid {len(full)}/{n_layers} int8 KV",
                                ["--attention", json.dumps(hybrid), "--kv-cache-dtype", "int8"])}
    for length in lengths:
        runs = [(variants[v][0], ["ours", str(folder), "--chunk", str(chunk), *variants[v][1], *extra]) for v in ours]
        if "transformers" in peers:
            runs.append(("transformers", ["transformers", str(folder)]))
        if "llama.cpp" in peers:
            runs.append(("llama.cpp", ["llama.cpp", str(_gguf(folder, "bf16"))]))
        for name, args in runs:
            print(f"[bench] {name}, {length} tokens ...", file=sys.stderr, flush=True)
            r = _worker([*args, "--length", str(length), *common], limit_s)
            report["rows"].append({"engine": name, "length": length, **r})
            print(f"[bench]   {r}", file=sys.stderr, flush=True)
    print_table(report)
    write_report(report, out)
    return report


def print_table(report: dict) -> None:
    weights = f"{report['quantization']} weights" if report.get("quantization") else "bf16 weights"
    if report.get("rope_scaling"):
        weights += f", rope_scaling {report['rope_scaling']}"
    print(f"\nQwen3-{report['size']} shapes, random {weights}, {report['threads']} threads, hybrid: window "
          f"{report['window']}, full attention on {report['full_layers']}; ours in chunks of {report['chunk']}")
    print(f"{'engine':<30}{'tokens':>8}{'prefill s':>11}{'prefill tok/s':>15}{'KV GiB':>9}{'decode tok/s':>14}"
          f"{'ours full / peer':>18}{'peak RSS GiB':>14}")
    ours = {r["length"]: r for r in report["rows"] if r["engine"] == "ours full" and "error" not in r}
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['engine']:<30}{r['length']:>8}  {r['error']}")
            continue
        ratio = ""
        if not r["engine"].startswith("ours") and r["length"] in ours:
            ratio = f"{r['prefill_s'] / ours[r['length']]['prefill_s']:.2f}x"
        rss = f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else ""
        print(f"{r['engine']:<30}{r['length']:>8}{r['prefill_s']:11.1f}{r['length'] / r['prefill_s']:15.1f}"
              f"{r['kv_gib']:9.3f}{r['decode_tok_s']:14.2f}{ratio:>18}{rss:>14}")
    print("ours full / peer: the peer's prefill time over ours (above 1: ours is faster)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["ours", "transformers", "llama.cpp"])
    ap.add_argument("path")
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--rope-scaling", default=None)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.kind == "ours":
        result = _ours(a.path, a.length, a.decode, a.chunk, json.loads(a.attention) if a.attention else None,
                       a.kv_cache_dtype, a.quantization, json.loads(a.rope_scaling) if a.rope_scaling else None)
    elif a.kind == "transformers":
        result = _transformers(a.path, a.length, a.decode)
    else:
        result = _llama_cpp(a.path, a.length, a.decode, a.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
