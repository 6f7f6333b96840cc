"""One side of ``qwen3lab bench sft``, run in its own process so that its peak RSS is its own.

``python -m qwen3lab.bench.sft_worker ours|trl SPEC.json`` trains as the spec says and prints one JSON
object: per-step wall times, tokens and losses, the RSS after imports and the peak RSS (ru_maxrss).
``ours`` runs ``qwen3lab.train.sft.train_sft`` on the spec's JSONL, whose packs (seeded first-fit)
the spec also lists; ``trl`` feeds exactly those packs, in order, to TRL's ``SFTTrainer`` with a PEFT
LoRA adapter, padding-free (one flat sequence per step, like ours) and labels only on assistant tokens.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time

import torch


def rss_gb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_ours(spec: dict, out: str) -> list[dict]:
    from qwen3lab.train.sft import SFTConfig, train_sft

    cfg = SFTConfig(model=spec["model"], train_file=spec["train_file"], output_dir=out, lora_r=spec["lora_r"],
                    lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                    target_modules=tuple(spec["targets"]), pack_length=spec["seq"], batch_size=spec["batch"],
                    max_steps=spec["steps"], lr=spec["lr"], warmup_steps=spec["warmup_steps"], bf16=spec["bf16"],
                    gradient_checkpointing=spec["gradient_checkpointing"], seed=spec["seed"], progress=False)
    records = train_sft(cfg)
    return [{"time_s": r["tokens"] / r["tokens_per_s"], "tokens": r["tokens"], "loss": r["loss"]} for r in records]


def run_trl(spec: dict, out: str) -> list[dict]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = []  # one row per pack, in step order; the sequential sampler hands them out in that order
    for step in spec["packs"]:
        for pack in step:
            ids = [t for ex in pack for t in ex["ids"]]
            labels = [t if m else -100 for ex in pack for t, m in zip(ex["ids"], ex["mask"])]
            rows.append({"input_ids": ids, "labels": labels, "seq_lengths": [len(ex["ids"]) for ex in pack]})
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32  # bf16: a frozen bf16 base, as ours
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation="sdpa")
    args = SFTConfig(
        output_dir=out, per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, optim="adamw_torch", bf16=spec["bf16"],
        gradient_checkpointing=spec["gradient_checkpointing"], gradient_checkpointing_kwargs={"use_reentrant": False},
        padding_free=True, packing=False, max_length=None, dataset_kwargs={"skip_prepare_dataset": True},
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, seed=spec["seed"], dataloader_num_workers=0)
    lora = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                      target_modules=list(spec["targets"]), bias="none", task_type="CAUSAL_LM")
    stamps, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(spec["model"]), callbacks=[Clock()])
    trainer.train()
    tokens = [sum(len(ex["ids"]) for pack in step for ex in pack) for step in spec["packs"]]
    # Step k's time runs from the end of step k-1 (the first: from its begin), data loading included, as ours.
    return [{"time_s": b - a, "tokens": n, "loss": loss}
            for a, b, n, loss in zip(stamps, stamps[1:], tokens, losses + [None] * len(tokens))]


def main() -> None:
    kind, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec["threads"])
    if kind == "ours":
        import qwen3lab.train.sft  # noqa: F401
    else:
        import peft, trl  # noqa: F401, E401
    import_rss = rss_gb()  # what the libraries alone hold, before any model
    with tempfile.TemporaryDirectory(prefix=f"bench-sft-{kind}-") as out:
        steps = run_ours(spec, out) if kind == "ours" else run_trl(spec, out)
    print(json.dumps({"steps": steps, "import_rss_gb": import_rss, "peak_rss_gb": peak_rss_gb()}))


if __name__ == "__main__":
    main()
