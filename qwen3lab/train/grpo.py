"""GRPO (``qwen3lab grpo``): group-relative policy optimisation with rollouts from our batched engine.

Per step, for each prompt q of the step's global batch, G completions o_1..o_G are sampled by
``LLM.generate`` (SamplingParams(n=G)) from the current policy. Rewards r_i (sum of the reward
functions) are normalised within the group: A_i = (r_i - mean(r)) / (std(r) + 1e-4). The loss is

    L = - (1 / sum_i |o_i|) * sum_i sum_t [ min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta * KL_it ]

with rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | ...), pi_old the policy that sampled
(rho = 1 with one update per rollout batch, ``num_iterations=1``, so the clip only acts from the
second update on), and KL_it = exp(ref - logp) - (ref - logp) - 1 (the k3 estimator) against the
reference policy: the adapter switched off for LoRA, a frozen copy of the start weights otherwise.
Log-probabilities are those of the sampling distribution: logits divided by the rollout temperature
(as TRL does), so rho and the KL compare the distributions that actually produced the tokens.
Simplifications: token-level mean over the whole global batch (as DAPO, not per-sequence means);
sampling logprobs are recomputed by the training forward rather than taken from the engine; no
reward model, no length penalty; groups with equal rewards carry zero advantage and only the KL.
"""

from __future__ import annotations

import copy
import json
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..lora import DEFAULT_TARGETS, lora_disabled, lora_layers
from ..sampling import SamplingParams
from . import distributed as dist
from .checkpoint import load_checkpoint_state, save_checkpoint, save_weights
from .common import autocast, make_optimizer, peak_memory_gb, prepare_trainable
from .forward import TokenLogprobs, pack_batch
from .rewards import resolve_reward
from .schedule import warmup_cosine
from .sft_data import read_jsonl


@dataclass
class GRPOConfig:
    model: str | None  # checkpoint folder, .gguf or repo id; None: the embedded SmolLM2 default
    prompts_file: str  # JSONL: {"messages": [...] or "prompt": str, "tools"?, plus fields rewards read}
    output_dir: str
    rewards: tuple[str, ...] = ("math",)  # built-in names (math, json, tool_call) or module:function
    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 8  # over all processes
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    enable_thinking: bool = False  # passed to the chat template
    num_iterations: int = 1  # optimizer updates per rollout batch
    micro_batch: int = 8  # completions per forward/backward
    clip_eps: float = 0.2
    beta: float = 0.0  # KL weight; 0 skips the reference forward
    lora_r: int = 16  # 0: full fine-tuning
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    init_adapter: str | None = None  # start from this PEFT adapter (e.g. an SFT result)
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_steps: int = 50
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_every: int = 0
    resume_from: str | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def _prompt_ids(llm, row: dict, enable_thinking: bool) -> list[int]:
    if "messages" in row:
        text = llm.render_chat(row["messages"], row.get("tools"), enable_thinking)
        return llm.tokenizer.encode(text, add_special_tokens=False)
    return llm.tokenizer.encode(row["prompt"])


def _step_rows(rows: list[dict], step: int, per_step: int, seed: int) -> list[dict]:
    per_epoch = max(1, len(rows) // per_step)
    epoch, k = divmod(step, per_epoch)
    order = list(range(len(rows)))
    random.Random(seed * 100003 + epoch).shuffle(order)
    return [rows[i] for i in order[k * per_step:(k + 1) * per_step]]


def rollout(llm, rows: list[dict], cfg: GRPOConfig, rewards, seed: int) -> list[dict]:
    """Sample G completions per row and score them; returns one dict per completion."""
    prompts = [_prompt_ids(llm, r, cfg.enable_thinking) for r in rows]
    params = [SamplingParams(n=cfg.group_size, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=seed + i) for i in range(len(rows))]
    llm.model.eval()  # no dropout while sampling
    outs = llm.generate(prompts, params)
    llm.model.train()
    samples = []
    for row, prompt, out in zip(rows, prompts, outs):
        group = []
        for c in out.outputs:
            r = sum(fn(c.text, row) for fn in rewards)
            group.append({"prompt": prompt, "completion": list(c.token_ids), "reward": r,
                          "correct": r >= len(rewards) - 1e-6})
        rs = torch.tensor([g["reward"] for g in group], dtype=torch.float64)
        adv = (rs - rs.mean()) / (rs.std(unbiased=False) + 1e-4)
        for g, a in zip(group, adv.tolist()):
            g["advantage"] = a
        samples += group
    return samples


def _logprobs(module, batch, device) -> torch.Tensor:
    seqs = [s["prompt"] + s["completion"] for s in batch]
    flags = [[False] * len(s["prompt"]) + [True] * len(s["completion"]) for s in batch]
    return module(*pack_batch(seqs, flags, device))


def train_grpo(cfg: GRPOConfig) -> list[dict]:
    from ..llm import LLM

    rank, world = dist.init(cfg.device)
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step {cfg.prompts_per_step} must be divisible by the processes ({world})")
    torch.manual_seed(cfg.seed + rank)
    # The engine's own model is trained: rollouts and updates share it.
    llm = LLM(cfg.model, dtype="float32", device=cfg.device, max_num_seqs=64, kv_cache_memory_gb=1.0,
              max_num_batched_tokens=2048)
    model = llm.model.train()
    params = prepare_trainable(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules,
                               cfg.init_adapter)
    reference = None
    if cfg.beta > 0 and not lora_layers(model):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    rewards = [resolve_reward(r) for r in cfg.rewards]
    rows = read_jsonl(cfg.prompts_file)
    module = TokenLogprobs(model, cfg.gradient_checkpointing, cfg.temperature)
    ddp = torch.nn.parallel.DistributedDataParallel(module) if world > 1 else None
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.max_steps * cfg.num_iterations, cfg.min_lr_ratio)
    start = load_checkpoint_state(cfg.resume_from, model, optimizer, scheduler)["step"] if cfg.resume_from else 0
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "grpo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    records = []
    bar = tqdm(total=cfg.max_steps, initial=start, desc="grpo", unit="step", disable=not cfg.progress or rank != 0)
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        rows_all = _step_rows(rows, step, cfg.prompts_per_step, cfg.seed)
        samples = rollout(llm, rows_all[rank::world], cfg, rewards, seed=cfg.seed * 7919 + step * 1000 + rank * 100)
        t_roll = time.perf_counter() - t0
        n_tok = dist.all_sum([sum(len(s["completion"]) for s in samples)])[0]
        micro = [samples[i:i + cfg.micro_batch] for i in range(0, len(samples), cfg.micro_batch)]
        micro = [m for m in micro if sum(len(s["completion"]) for s in m)]
        with torch.no_grad(), autocast(cfg.device, cfg.bf16):
            for m in micro:
                if cfg.num_iterations > 1:
                    old = _logprobs(module, m, cfg.device)
                    for s, lp in zip(m, old.split([len(s["completion"]) for s in m])):
                        s["old"] = lp
                if cfg.beta > 0:
                    ref_ctx = lora_disabled(model) if reference is None else nullcontext()
                    with ref_ctx:
                        ref_mod = module if reference is None else TokenLogprobs(reference, temperature=cfg.temperature)
                        ref = _logprobs(ref_mod, m, cfg.device)
                    for s, lp in zip(m, ref.split([len(s["completion"]) for s in m])):
                        s["ref"] = lp
        stats = {"kl": 0.0, "clipped": 0.0}
        for _ in range(cfg.num_iterations):
            # Every rank must run the same number of backward passes for DDP; pad with an empty one.
            n_micro = int(max(dist.gather_objects(len(micro))))
            for k in range(n_micro):
                m = micro[k] if k < len(micro) else []
                sync = ddp is None or k == n_micro - 1
                with (ddp.no_sync() if not sync else nullcontext()), autocast(cfg.device, cfg.bf16):
                    if m:
                        lp = _logprobs(ddp or module, m, cfg.device)
                        lens = [len(s["completion"]) for s in m]
                        adv = torch.cat([torch.full((n,), s["advantage"]) for s, n in zip(m, lens)]).to(lp)
                        old = torch.cat([s["old"] for s in m]) if cfg.num_iterations > 1 else lp.detach()
                        ratio = torch.exp(lp - old)
                        obj = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
                        if cfg.beta > 0:
                            d = torch.cat([s["ref"] for s in m]).to(lp) - lp
                            kl = torch.exp(d) - d - 1
                            obj = obj - cfg.beta * kl
                            stats["kl"] += kl.detach().sum().item()
                        stats["clipped"] += ((ratio - 1).abs() > cfg.clip_eps).sum().item()
                        loss = -obj.sum() / n_tok * world
                    else:  # a zero loss through every trainable weight keeps the DDP reducer in step
                        loss = sum(p.sum() for p in params) * 0.0
                    loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        r_sum, c_sum, n, kl_sum, clip_sum = dist.all_sum([sum(s["reward"] for s in samples),
                                                          sum(s["correct"] for s in samples), len(samples),
                                                          stats["kl"], stats["clipped"]])
        rec = {"step": step + 1, "reward": r_sum / n, "accuracy": c_sum / n, "kl": kl_sum / n_tok / cfg.num_iterations,
               "completion_len": n_tok / n, "clip_frac": clip_sum / n_tok / cfg.num_iterations,
               "lr": scheduler.get_last_lr()[0], "rollout_s": t_roll, "step_s": time.perf_counter() - t0,
               "peak_mem_gb": peak_memory_gb(cfg.device)}
        records.append(rec)
        if rank == 0:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(reward=f"{rec['reward']:.3f}", acc=f"{rec['accuracy']:.2f}", len=f"{rec['completion_len']:.0f}")
            bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(out / f"checkpoint-{step + 1}", model, optimizer, scheduler, step + 1, llm.model_path)
    bar.close()
    if rank == 0:
        save_weights(model, out / "final", llm.model_path)
    dist.barrier()
    return records
