"""Report: LoRA SFT of SmolLM2-135M-Instruct on the repo's structured-extraction task.

Generates train / held-out data with ``qwen3lab.data.extraction``, scores the base model's held-out
exact match (greedy, our engine), trains a LoRA adapter with ``train_sft``, scores again with
``LLM(model, lora=adapter)``. Prints one JSON summary (scores, wall times, peak memory: of training
alone, ``train_peak_rss_gb``, and of the whole process with both scorings, ``peak_rss_gb``).

    python scripts/report_sft_extraction.py --out /tmp/sft_report --steps 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qwen3lab import LLM, SamplingParams
from qwen3lab.data.extraction import exact_match, make_examples
from qwen3lab.train.common import peak_memory_gb
from qwen3lab.train.sft import SFTConfig, train_sft
from qwen3lab.weights.default_model import smollm2_gguf_path


def reset_peak_rss() -> None:
    """Linux: restart the process's RSS high-water mark (VmHWM) from its current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_since_reset_gb() -> float:
    kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(kb) / 2**20


def score(llm: LLM, rows: list[dict]) -> float:
    prompts = [llm.tokenizer.encode(llm.render_chat(r["messages"][:1]), add_special_tokens=False) for r in rows]
    outs = llm.generate(prompts, SamplingParams(max_tokens=48, temperature=0.0))
    hits = [exact_match(o.text, r["record"]) for o, r in zip(outs, rows)]
    print("sample output:", repr(outs[0].text), "expected:", json.dumps(rows[0]["record"]))
    return sum(hits) / len(hits)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sft_report")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--pack-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="same losses; off keeps every layer's activations (4.1 GB peak instead of 1.7 GB)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = make_examples(args.train, seed=1), make_examples(args.heldout, seed=2)
    (out / "train.jsonl").write_text("\n".join(json.dumps({"messages": r["messages"]}) for r in train))
    gguf = smollm2_gguf_path()
    t = time.perf_counter()
    # A small KV pool: 100 short prompts need ~0.1 GB, the default 4 GB pool would dominate peak memory.
    base = score(LLM(gguf, dtype="float32", kv_cache_memory_gb=0.5), held)
    t_base = time.perf_counter() - t
    print(f"base exact match {base:.3f} ({t_base:.0f} s)", flush=True)
    reset_peak_rss()  # the scoring LLM is gone: what follows is training's own peak
    t = time.perf_counter()
    recs = train_sft(SFTConfig(model=str(gguf), train_file=str(out / "train.jsonl"), output_dir=str(out / "run"),
                               lora_r=16, lora_alpha=32, lora_dropout=0.05, pack_length=args.pack_length,
                               batch_size=args.batch_size, max_steps=args.steps, warmup_steps=5, lr=args.lr,
                               gradient_checkpointing=args.gradient_checkpointing, bf16=True, progress=False))
    t_train = time.perf_counter() - t
    train_peak = peak_rss_since_reset_gb()
    t = time.perf_counter()
    tuned = score(LLM(gguf, dtype="float32", kv_cache_memory_gb=0.5, lora=out / "run" / "final"), held)
    t_eval = time.perf_counter() - t
    summary = {"base_exact_match": base, "lora_exact_match": tuned, "heldout": len(held), "steps": args.steps,
               "train_tokens": sum(r["tokens"] for r in recs), "first_loss": recs[0]["loss"],
               "last_loss": recs[-1]["loss"], "train_wall_s": round(t_train, 1), "base_eval_wall_s": round(t_base, 1),
               "tuned_eval_wall_s": round(t_eval, 1), "train_tokens_per_s": round(sum(r["tokens"] for r in recs) / t_train, 1),
               "train_peak_rss_gb": round(train_peak, 2), "peak_rss_gb": round(peak_memory_gb("cpu"), 2)}
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
