"""Supervised fine-tuning (``qwen3lab sft``): next-token cross-entropy on assistant tokens only.

Objective per optimizer step, over the step's global batch B of packed conversations:

    L = - (1 / |T_B|) * sum_{t in T_B} log p_theta(x_t | x_<t)

where T_B is the set of assistant tokens of B (mask derived from the rendered chat template, see
``render.py``; the end-of-turn token is included, the thinking block optionally excluded). Each
token counts once: the sum is normalised by the global token count, not per example or per
micro-batch, so gradient accumulation and the number of DDP processes do not change the loss.
Packing puts several conversations in one flat sequence list with per-example causal attention (no
cross-contamination, no padding). AdamW, linear warm-up then cosine decay; optional bf16 autocast
(with LoRA the frozen base is then stored in bf16, the adapters stay float32) and per-layer gradient
checkpointing; LoRA (adapters only) or full fine-tuning (``lora_r=0``).
Simplifications: no sequence-length bucketing, examples longer than ``pack_length`` are cut.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lora import DEFAULT_TARGETS
from ..weights.loader import load_checkpoint
from . import distributed as dist
from .checkpoint import load_checkpoint_state, save_checkpoint, save_weights
from .common import autocast, make_optimizer, peak_memory_gb, prepare_trainable, release_free_memory
from .forward import TokenLogprobs, pack_batch
from .schedule import warmup_cosine
from .sft_data import StepBatches, read_jsonl, tokenize_conversations


@dataclass
class SFTConfig:
    model: str | None  # checkpoint folder, .gguf or repo id; None: the embedded SmolLM2 default
    train_file: str
    output_dir: str
    eval_file: str | None = None
    lora_r: int = 16  # 0: full fine-tuning
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    train_thinking: bool = True  # False: <think> blocks stay in the input but out of the loss
    pack_length: int = 1024  # tokens per pack
    batch_size: int = 8  # packs per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_steps: int | None = None  # default: epochs x steps per epoch
    epochs: int = 1
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    eval_every: int = 0
    save_every: int = 0
    resume_from: str | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def _micro_batches(step_packs, world: int, rank: int, accum: int):
    per = len(step_packs) // (world * accum)
    for k in range(accum):
        chunk = step_packs[(k * world + rank) * per:(k * world + rank + 1) * per]
        yield [ex for p in chunk for ex in p]


def evaluate(module: TokenLogprobs, examples, cfg: SFTConfig, rank: int, world: int) -> float:
    module.eval()
    total = count = 0.0
    with torch.no_grad(), autocast(cfg.device, cfg.bf16):
        for i in range(rank, len(examples), world):
            ex = examples[i]
            lp = module(*pack_batch([ex.ids], [ex.mask], cfg.device))
            total, count = total - lp.sum().item(), count + lp.numel()
    module.train()
    total, count = dist.all_sum([total, count])
    return total / max(count, 1)


def train_sft(cfg: SFTConfig) -> list[dict]:
    """Run SFT; return the per-step log records (also written to ``<output_dir>/log.jsonl`` by rank 0)."""
    rank, world = dist.init(cfg.device)
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes ({world}) x grad_accum "
                         f"({cfg.grad_accum})")
    torch.manual_seed(cfg.seed + rank)  # dropout masks differ per rank, as with any data-parallel run
    # A frozen base needs no float32 master copy: LoRA with bf16 loads it in bf16 (half the memory, no
    # per-step weight casts under autocast); full fine-tuning keeps float32 weights for AdamW.
    base_dtype = torch.bfloat16 if cfg.bf16 and cfg.lora_r > 0 else torch.float32
    ckpt = load_checkpoint(cfg.model if cfg.model else _default_model(), base_dtype, cfg.device)
    model, tok = ckpt.model.train(), ckpt.tokenizer
    params = prepare_trainable(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    train = tokenize_conversations(read_jsonl(cfg.train_file), tok, cfg.pack_length, cfg.train_thinking, cfg.train_file)
    evals = (tokenize_conversations(read_jsonl(cfg.eval_file), tok, cfg.pack_length, cfg.train_thinking, cfg.eval_file)
             if cfg.eval_file else [])
    batches = StepBatches(train, cfg.pack_length, cfg.batch_size, cfg.seed)
    total_steps = cfg.max_steps or cfg.epochs * batches.steps_per_epoch()
    module = TokenLogprobs(model, cfg.gradient_checkpointing)
    ddp = torch.nn.parallel.DistributedDataParallel(module) if world > 1 else None
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    start = 0
    if cfg.resume_from:
        start = load_checkpoint_state(cfg.resume_from, model, optimizer, scheduler)["step"]
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sft_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_path = out / "log.jsonl"
    records = []
    bar = tqdm(total=total_steps, initial=start, desc="sft", unit="step", disable=not cfg.progress or rank != 0)
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        step_packs = batches.step(step)
        n_targets = sum(ex.num_targets for p in step_packs for ex in p)  # known to every rank: no all-reduce
        loss_sum = tokens = 0.0
        micro = list(_micro_batches(step_packs, world, rank, cfg.grad_accum))
        for k, exs in enumerate(micro):
            inputs = pack_batch([e.ids for e in exs], [e.mask for e in exs], cfg.device)
            sync = ddp is None or k == len(micro) - 1
            with (ddp.no_sync() if not sync else nullcontext()), autocast(cfg.device, cfg.bf16):
                lp = (ddp or module)(*inputs)
                # DDP averages gradients over ranks; times world makes it the global token mean.
                loss = -lp.sum() / n_targets * world
                loss.backward()
            loss_sum -= lp.detach().sum().item()
            tokens += len(inputs[0])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = dist.all_sum([loss_sum, tokens])
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, "loss": loss_sum / n_targets, "lr": lr, "grad_norm": grad_norm,
               "tokens": int(tokens), "tokens_per_s": tokens / dt, "peak_mem_gb": peak_memory_gb(cfg.device)}
        if cfg.eval_every and evals and ((step + 1) % cfg.eval_every == 0 or step + 1 == total_steps):
            rec["eval_loss"] = evaluate(module, evals, cfg, rank, world)
        records.append(rec)
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            mem=f"{rec['peak_mem_gb']:.2f}G")
            bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(out / f"checkpoint-{step + 1}", model, optimizer, scheduler, step + 1, ckpt.path)
    bar.close()
    if rank == 0:
        save_weights(model, out / "final", ckpt.path)
    dist.barrier()
    del model, ckpt, module, ddp, optimizer, scheduler, params  # what the caller runs next (scoring)
    release_free_memory()  # starts from a small process, not on top of the freed activations
    return records


def _default_model():
    from ..weights.default_model import smollm2_gguf_path

    return smollm2_gguf_path()

