"""Training an EAGLE3 draft head for a target model with the training-time-test (TTT) objective.

Objective. For a target sequence x_0..x_{T-1} with target features f_t (layers 1, L/2-1, L-4 at
position t, fused by ``fc``) and target greedy labels y_j = argmax p_target(. | x_<=j), unroll
S steps. Step i, row t: hidden state h_t^(0) = fc(f_t), h_t^(i) = the draft's own pre-norm output
of step i-1 at row t; token input x_{t+1+i}; position t+i. Row t at step i attends to the step-0
keys of rows <= t and to the keys of steps 1..i of row t only, which is the context the draft has
at inference when it drafts the (i+1)-th token of a chain. Loss, over response positions whose
label is in the draft vocabulary (D maps target ids to draft ids):

    L = sum_{i<S} 0.8^i * mean_t CE(lm_head(norm(h_t^(i+1))), D(y_{t+1+i}))

as in EAGLE-3 and SpecForge (their 0.8 step decay), gradients flowing through the unroll.

Simplifications: hard labels (the target's argmax) instead of SpecForge's soft target
distribution, which is what greedy verification accepts; features are recorded once before
training (offline), in float32; no sequence packing; the target's embeddings are shared and
frozen (not saved), and ``lm_head`` starts from the target head's rows of the draft vocabulary.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model.rope import apply_rotary
from ..speculative.eagle3_io import save_eagle3
from ..speculative.eagle3_model import Eagle3Config, Eagle3Model
from .eagle3_data import Example, draft_vocab, generate, label_positions, load_records, record


@dataclass
class Eagle3TrainConfig:
    target: str | None = None  # None: the embedded SmolLM2 default
    data: str = ""  # JSONL of prompts (optionally with responses)
    out: str = "eagle3-draft"
    steps: int = 400
    ttt_steps: int = 3
    draft_vocab: int = 32000
    lr: float = 1e-3
    batch_size: int = 8
    max_tokens: int = 256  # response length when the target generates
    max_num_seqs: int = 16
    seed: int = 0
    log_every: int = 25


def ttt_unroll(model: Eagle3Model, embed, ids: torch.Tensor, aux: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """ids [B, T], aux [B, T, 3h] -> the draft's pre-norm outputs h^(1) .. h^(steps), each [B, T, h].

    Row t of output i is what the draft computes at inference for the (i+1)-th token of a chain
    drafted after x_0..x_{t+1}, when its first i drafts were x_{t+2}..x_{t+1+i}.
    """
    B, T = ids.shape
    mid, attn = model.midlayer, model.midlayer.self_attn
    H, KV, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    hidden = model.fuse(aux)
    keys, values, outs = [], [], []
    for i in range(steps):
        # Row t at step i: token x_{t+1+i} at position t+i.
        tok = F.pad(ids[:, 1 + i:], (0, 1 + i))
        x, residual = mid.attn_input(embed(tok), hidden)
        q, k, v = attn.qkv_proj(x).split(attn.qkv_sizes, dim=-1)
        q, k, v = q.reshape(B, T, H, d), k.reshape(B, T, KV, d), v.reshape(B, T, KV, d)
        cos, sin = model.rotary_emb(torch.arange(T) + i, x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys.append(k.repeat_interleave(H // KV, dim=2).transpose(1, 2))  # [B, H, T, d]
        values.append(v.repeat_interleave(H // KV, dim=2).transpose(1, 2))
        qh = q.transpose(1, 2)
        scores = [(qh @ keys[0].transpose(-1, -2)).masked_fill(~causal, float("-inf"))]
        scores += [(qh * keys[j]).sum(-1, keepdim=True) for j in range(1, i + 1)]  # own chain only
        p = (torch.cat(scores, dim=-1) * attn.scaling).softmax(-1)
        o = p[..., :T] @ values[0]
        for j in range(1, i + 1):
            o = o + p[..., T + j - 1: T + j] * values[j]
        hidden = mid.finish(residual, attn.o_proj(o.transpose(1, 2).reshape(B, T, H * d)))
        outs.append(hidden)
    return outs


def ttt_losses(model: Eagle3Model, embed, ids: torch.Tensor, aux: torch.Tensor, labels: torch.Tensor,
               mask: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[float]]:
    """ids [B, T], aux [B, T, 3h], labels [B, T] draft ids at each position, mask [B, T] bool.

    Returns the loss and the top-1 accuracy of each unrolled step.
    """
    losses, accs = [], []
    for i, hidden in enumerate(ttt_unroll(model, embed, ids, aux, steps)):
        # Row t at step i predicts label y_{t+1+i}, the target's token after x_{t+1+i}.
        lab = F.pad(labels[:, 1 + i:], (0, 1 + i))
        m = F.pad(mask[:, 1 + i:], (0, 1 + i))
        logits = model.compute_logits(hidden)[m]
        losses.append(F.cross_entropy(logits, lab[m]) if m.any() else logits.sum() * 0)
        accs.append((logits.argmax(-1) == lab[m]).float().mean().item() if m.any() else 0.0)
    return losses, accs


def _batches(examples: list[Example], t2d: torch.Tensor, d_index: torch.Tensor, batch_size: int, rng):
    """Endless padded batches of similar-length examples: (ids, aux, draft labels, mask)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    groups = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        rng.shuffle(groups)
        for g in groups:
            ex = [examples[i] for i in g]
            T = max(len(e.ids) for e in ex)
            ids = torch.zeros(len(ex), T, dtype=torch.long)
            aux = torch.zeros(len(ex), T, ex[0].aux.shape[1])
            labels = torch.zeros(len(ex), T, dtype=torch.long)
            mask = torch.zeros(len(ex), T, dtype=torch.bool)
            for r, e in enumerate(ex):
                n = len(e.ids)
                ids[r, :n], aux[r, :n] = torch.tensor(e.ids), e.aux
                labels[r, :n] = d_index[e.argmax]
                pos = torch.tensor(list(label_positions(e)), dtype=torch.long)
                mask[r, pos] = t2d[e.argmax[pos]]  # labels outside the draft vocabulary are dropped
            yield ids, aux, labels, mask


def new_draft(target, draft_vocab_size: int, layers: tuple[int, ...] | None = None) -> Eagle3Model:
    """A fresh head at the target's widths (the draft layer mirrors a target layer)."""
    c = target.config
    cfg = {"model_type": "llama", "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
           "head_dim": c.head_dim, "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps,
           "max_position_embeddings": c.max_position_embeddings, "rope_theta": c.rope.theta,
           "vocab_size": c.vocab_size, "draft_vocab_size": draft_vocab_size}
    if layers is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(layers)}
    model = Eagle3Model(Eagle3Config.from_dict(cfg, "new EAGLE3 head"))
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    return model


def train_eagle3(cfg: Eagle3TrainConfig, log=print) -> dict:
    from ..llm import LLM

    torch.manual_seed(cfg.seed)
    llm = LLM(cfg.target, dtype="float32", max_num_seqs=cfg.max_num_seqs)
    target = llm.model
    t0 = time.time()
    examples = generate(llm, load_records(cfg.data), cfg.max_tokens)
    t_gen = time.time() - t0
    draft = new_draft(target, min(cfg.draft_vocab, target.config.vocab_size))
    layers = draft.config.target_layers(target.config.num_hidden_layers)
    record(target, examples, layers)
    d2t, t2d = draft_vocab(examples, target.config.vocab_size, draft.config.draft_vocab_size)
    draft.d2t.copy_(d2t)
    draft.t2d.copy_(t2d)
    ids = torch.arange(len(d2t)) + d2t
    d_index = torch.zeros(target.config.vocab_size, dtype=torch.long)
    d_index[ids] = torch.arange(len(ids))
    with torch.no_grad():  # a head that already points at the right tokens for the features' scale
        draft.lm_head.weight.copy_(target.lm_head.weight[ids])
    n_tokens = sum(len(e.ids) - e.num_prompt for e in examples)
    log(f"{len(examples)} sequences, {n_tokens} response tokens generated in {t_gen:.0f}s; "
        f"draft vocab {len(ids)} covers {float(_coverage(examples, t2d)):.3f} of the labels")
    embed = target.model.embed_tokens.requires_grad_(False)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    batches = _batches(examples, t2d, d_index, cfg.batch_size, random.Random(cfg.seed))
    draft.train()
    t1, history = time.time(), []
    for step in range(1, cfg.steps + 1):
        b_ids, b_aux, b_lab, b_mask = next(batches)
        losses, accs = ttt_losses(draft, embed, b_ids, b_aux, b_lab, b_mask, cfg.ttt_steps)
        loss = sum(0.8**i * l for i, l in enumerate(losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            rec = {"step": step, "loss": round(loss.item(), 4), "acc": [round(a, 3) for a in accs],
                   "elapsed_s": round(time.time() - t1, 1)}
            history.append(rec)
            log(json.dumps(rec))
    draft.eval()
    out = save_eagle3(draft, cfg.out)
    summary = {"out": str(out), "sequences": len(examples), "response_tokens": n_tokens,
               "generate_s": round(t_gen, 1), "train_s": round(time.time() - t1, 1), "history": history}
    (Path(out) / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _coverage(examples: list[Example], t2d: torch.Tensor) -> float:
    hit = tot = 0
    for e in examples:
        pos = torch.tensor(list(label_positions(e)), dtype=torch.long)
        hit += int(t2d[e.argmax[pos]].sum())
        tot += len(pos)
    return hit / max(tot, 1)
