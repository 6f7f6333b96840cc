"""``qwen3lab bench sft``: LoRA SFT step throughput and peak memory, ours next to TRL's SFTTrainer + PEFT.

Both sides get the same job: the same checkpoint folder (a GGUF model, by default the embedded
SmolLM2-135M-Instruct, is exported once to a safetensors folder with our converter, so both load
identical weights), the same packs of token ids and assistant-only loss masks (the repo's
structured-extraction conversations, rendered and packed once here with ``train.sft_data``, exactly as
``train_sft`` packs them), the same LoRA r / alpha / dropout / targets, batch, steps, AdamW settings and
learning-rate schedule (cosine to 0.1x, no warm-up: both libraries then give the same rates), dtype,
gradient-checkpointing setting and thread count. Each side runs in its own process
(``sft_worker``), one after the other, and reports its step times and its own peak RSS. The first
``warmup`` steps are left out of tokens/s; with ``repeats`` > 1 the sides alternate and each keeps
its fastest run (the machine may be shared) and its highest peak.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..lora import DEFAULT_TARGETS
from .checkpoint import cache_root
from .report import write_report


def model_folder(model: str | None) -> Path:
    """A safetensors folder for both sides: a folder as it is, a GGUF file exported once (bf16) to the cache."""
    if model and Path(model).is_dir():
        return Path(model)
    from ..weights.default_model import smollm2_gguf_path
    from ..weights.safetensors_export import export_safetensors

    gguf = Path(model) if model else smollm2_gguf_path()
    folder = cache_root() / f"{gguf.stem}-bf16"
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        export_safetensors(gguf, tmp, "bf16")
        tmp.rename(folder)
    return folder


def make_packs(folder: Path, train_file: Path, n_examples: int, seq: int, batch: int, steps: int,
               seed: int) -> list[list[list[dict]]]:
    """Write the JSONL ours reads; return the packs of each step as ``train_sft`` will build them."""
    from ..data.extraction import make_examples
    from ..tokenizer import Tokenizer
    from ..train.sft_data import StepBatches, tokenize_conversations

    rows = [{"messages": r["messages"]} for r in make_examples(n_examples, seed=1)]
    train_file.write_text("\n".join(json.dumps(r) for r in rows))
    examples = tokenize_conversations(rows, Tokenizer.from_dir(folder), seq)
    batches = StepBatches(examples, seq, batch, seed)
    return [[[{"ids": ex.ids, "mask": ex.mask} for ex in pack] for pack in batches.step(s)] for s in range(steps)]


def _worker(kind: str, spec_path: Path, threads: int) -> dict:
    if kind == "trl" and not all(importlib.util.find_spec(m) for m in ("trl", "peft", "transformers")):
        return {"error": "trl, peft and transformers are needed: pip install -e '.[bench]'"}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "qwen3lab.bench.sft_worker", kind, str(spec_path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(res: dict, warmup: int) -> dict:
    if "error" in res:
        return res
    timed = res["steps"][warmup:] or res["steps"]
    tokens, seconds = sum(s["tokens"] for s in timed), sum(s["time_s"] for s in timed)
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / len(timed), "peak_rss_gb": res["peak_rss_gb"],
            "import_rss_gb": res["import_rss_gb"], "train_rss_gb": res["peak_rss_gb"] - res["import_rss_gb"],
            "first_loss": res["steps"][0]["loss"], "steps": res["steps"]}


def _best(runs: list[dict]) -> dict:
    """The fastest run, with every run's tokens/s and the highest peak RSS of all."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = max(ok, key=lambda r: r["tokens_per_s"])
    return {**best, "runs_tokens_per_s": [r["tokens_per_s"] for r in ok],
            "peak_rss_gb": max(r["peak_rss_gb"] for r in ok)}


def run_sft_bench(model: str | None = None, peers: tuple[str, ...] = ("trl",), steps: int = 4, seq: int = 512,
                  batch: int = 4, lora_r: int = 16, lora_alpha: float = 32, lora_dropout: float = 0.05,
                  targets: tuple[str, ...] = DEFAULT_TARGETS, lr: float = 2e-4, bf16: bool = True,
                  gradient_checkpointing: bool = True, warmup: int = 1, repeats: int = 1, threads: int | None = None,
                  examples: int = 2000, seed: int = 0, out: str | None = "bench_sft.json") -> dict:
    if unknown := set(peers) - {"trl"}:
        raise ValueError(f"unknown peer(s) {sorted(unknown)}: the SFT bench compares with trl only")
    threads = threads or torch.get_num_threads()
    folder = model_folder(model)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        train_file = Path(tmp) / "train.jsonl"
        packs = make_packs(folder, train_file, examples, seq, batch, steps, seed)
        spec = dict(model=str(folder), train_file=str(train_file), packs=packs, steps=steps, seq=seq, batch=batch,
                    lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, targets=list(targets), lr=lr,
                    warmup_steps=0, bf16=bf16, gradient_checkpointing=gradient_checkpointing, seed=seed,
                    threads=threads)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        settings = {k: v for k, v in spec.items() if k not in ("packs", "train_file")}
        settings["tokens_per_step"] = [sum(len(ex["ids"]) for p in step for ex in p) for step in packs]
        settings["targets_per_step"] = [sum(sum(ex["mask"][1:]) for p in step for ex in p) for step in packs]
        report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": threads,
                              "torch": torch.__version__}, "settings": settings, "rows": []}
        kinds = ("ours", *[p for p in peers if p == "trl"])
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for rep in range(repeats):  # alternated, so that a busy spell of the machine hits both sides alike
            for kind in kinds:
                print(f"[bench sft] {kind} ({rep + 1}/{repeats}) ...", file=sys.stderr, flush=True)
                runs[kind].append(summarise(_worker(kind, spec_path, threads), warmup))
        for kind in kinds:
            report["rows"].append({"trainer": kind, **_best(runs[kind])})
    rows = {r["trainer"]: r for r in report["rows"]}
    if "error" not in rows["ours"] and "trl" in rows and "error" not in rows["trl"]:
        ours, trl = rows["ours"], rows["trl"]
        report["ours_over_trl"] = {k: ours[k] / trl[k] for k in ("tokens_per_s", "peak_rss_gb", "train_rss_gb")}
    print_table(report)
    write_report(report, out)
    return report


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"LoRA SFT | {Path(s['model']).name} | r={s['lora_r']} alpha={s['lora_alpha']} dropout={s['lora_dropout']} "
          f"| {s['batch']} packs x {s['seq']} tokens | {'bf16' if s['bf16'] else 'fp32'} | gradient checkpointing "
          f"{'on' if s['gradient_checkpointing'] else 'off'} | {report['machine']['threads']} threads")
    head = f"{'trainer':<9}{'tok/s':>9}{'step s':>9}{'peak RSS GB':>13}{'after imports':>15}{'1st loss':>10}"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['trainer']:<9}  error: {r['error']}")
            continue
        loss = f"{r['first_loss']:.4f}" if r["first_loss"] is not None else "-"
        print(f"{r['trainer']:<9}{r['tokens_per_s']:>9.1f}{r['step_s']:>9.2f}{r['peak_rss_gb']:>13.2f}"
              f"{r['import_rss_gb']:>15.2f}{loss:>10}")
    if ratio := report.get("ours_over_trl"):
        print(f"ours / TRL: {ratio['tokens_per_s']:.2f}x tokens/s, {ratio['peak_rss_gb']:.2f}x peak RSS "
              f"({ratio['train_rss_gb']:.2f}x above the libraries' own RSS)")
