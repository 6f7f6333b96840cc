"""Train an EAGLE3 head for the real SmolLM2-135M-Instruct on CPU, then measure it. One command:

    python benchmarks/eagle3_smollm2.py --out runs/eagle3-smollm2 [--train-prompts 32 --steps 120]
    python benchmarks/eagle3_smollm2.py --out runs/eagle3-smollm2 --eval-only   # measure again, quietly

Steps: (1) the target answers training prompts (qwen3lab.data.eagle3_prompts) greedily through the
batched engine; chunks of the shipped story corpus are added as given responses (teacher-forced,
cheap: one target forward each); (2) ``train_eagle3`` (TTT objective, see qwen3lab/train/eagle3.py);
(3) on held-out prompts (subjects never trained on), greedy decoding one request at a time: plain,
then EAGLE3 with k = 1..5 (outputs must equal plain), mean accepted length and wall-clock tokens/s;
the draft's held-out accuracy a_j at chain depth j = 1..5 on the plain outputs (draft j right when
drafts 1..j-1 were the target's tokens): mean accepted length is about 1 + a_1 + a_1 a_2 + ...;
(4) the n-gram drafter against plain on an extraction prompt. Writes OUT/results.json.
The defaults are sized for a heavily shared 2-core CPU; raise them on a free machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qwen3lab import LLM, SamplingParams
from qwen3lab.data import eagle3_prompts, extraction
from qwen3lab.train.eagle3 import Eagle3TrainConfig, train_eagle3


def corpus_records(n: int, words: int = 110) -> list[dict]:
    text = (Path(eagle3_prompts.__file__).parent / "ppl_corpus.txt").read_text().split()
    chunks = [" ".join(text[i: i + words]) for i in range(0, len(text) - words, words)][:n]
    return [{"prompt": "Continue the story.", "response": c} for c in chunks]


@torch.inference_mode()
def depth_accuracy(llm: LLM, draft: str, outs, depth: int = 5) -> list[float]:
    """Teacher-forced held-out accuracy of chain drafts 1..depth on the target's greedy outputs."""
    from qwen3lab.engine.config import EngineConfig
    from qwen3lab.speculative import SpeculativeConfig
    from qwen3lab.speculative.eagle3 import Eagle3Drafter
    from qwen3lab.train.eagle3 import ttt_unroll
    from qwen3lab.train.eagle3_data import Example, record

    d = Eagle3Drafter.from_spec(SpeculativeConfig("eagle3", draft), llm.model,
                                EngineConfig(max_num_seqs=1, max_model_len=64), torch.float32, "cpu")
    hits, total = torch.zeros(depth), torch.zeros(depth)
    for o in outs:
        e = Example(list(o.prompt_token_ids) + list(o.token_ids), len(o.prompt_token_ids))
        record(llm.model, [e], d.model.config.target_layers(llm.config.num_hidden_layers))
        for i, h in enumerate(ttt_unroll(d.model, d.embed, torch.tensor([e.ids]), e.aux[None], depth)):
            pred = d.target_ids[d.model.compute_logits(h[0]).argmax(-1)]
            # Row t, step i drafts the token after x_{t+1+i}; chains start once a token was generated.
            rows = torch.arange(e.num_prompt - 1, len(e.ids) - 1 - i)
            hits[i] += (pred[rows] == e.argmax[rows + 1 + i]).sum()
            total[i] += len(rows)
    return [round(float(h / max(t, 1)), 3) for h, t in zip(hits, total)]


def timed(llm: LLM, prompts: list[str], max_tokens: int):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    outs, t0 = [], time.perf_counter()
    for p in prompts:  # one request at a time: the latency setting speculation is for
        outs.extend(llm.generate([p], params))
    dt = time.perf_counter() - t0
    return outs, sum(len(o.token_ids) for o in outs) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/eagle3-smollm2")
    ap.add_argument("--train-prompts", type=int, default=32)
    ap.add_argument("--corpus-chunks", type=int, default=30)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--draft-vocab", type=int, default=4096)
    ap.add_argument("--eval-prompts", type=int, default=3)
    ap.add_argument("--eval-tokens", type=int, default=48)
    ap.add_argument("--ttt-steps", type=int, default=3, help="training-time-test unroll depth")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-num-seqs", type=int, default=32, help="batch of the target while it generates data")
    ap.add_argument("--dtype", default="float32", help="target dtype when measuring (bfloat16 uses the CPU kernels)")
    ap.add_argument("--eval-only", action="store_true", help="measure OUT/draft, trained by an earlier run")
    ap.add_argument("--train-only", action="store_true", help="stop after training (measure later, quietly)")
    ap.add_argument("--chains", default="1,2,3,4,5", help="chain lengths k to measure")
    ap.add_argument("--trees", default="", help="token trees to measure, NUM_TOKENS:TOPK:NUM_STEPS comma-separated, "
                                                "e.g. 8:4:4,12:4:5")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_only:  # training is not timed; the measurements below want a quiet machine
        summary = json.loads((out / "draft" / "training_log.json").read_text())
        results = {"args": vars(args), "train": {k: v for k, v in summary.items() if k != "history"},
                   "history": summary["history"]}
    else:
        data = out / "train.jsonl"
        recs = ([{"prompt": p} for p in eagle3_prompts.prompts(limit=args.train_prompts)]
                + corpus_records(args.corpus_chunks))
        data.write_text("".join(json.dumps(r) + "\n" for r in recs))
        t0 = time.time()
        summary = train_eagle3(Eagle3TrainConfig(data=str(data), out=str(out / "draft"), steps=args.steps,
                                                 ttt_steps=args.ttt_steps, lr=args.lr, draft_vocab=args.draft_vocab,
                                                 max_tokens=args.gen_tokens, batch_size=8, max_num_seqs=args.max_num_seqs,
                                                 log_every=25),
                               log=lambda m: print(m, flush=True))
        results = {"args": vars(args), "train_total_s": round(time.time() - t0, 1),
                   "train": {k: v for k, v in summary.items() if k != "history"}, "history": summary["history"]}
    print(json.dumps(results["train"]), flush=True)
    if args.train_only:
        return

    plain = LLM(None, dtype=args.dtype, max_num_seqs=1)
    chats = [plain.render_chat([{"role": "user", "content": p}])
             for p in eagle3_prompts.prompts(held_out=True, limit=args.eval_prompts)]
    base, base_tps = timed(plain, chats, args.eval_tokens)
    # This machine's speed drifts within minutes: plain decoding is timed again after the speculative
    # runs and the faster of the two is the baseline (the conservative speedup).
    print(f"plain: {base_tps:.2f} tok/s", flush=True)
    results["eagle3"] = {}
    configs = [(k, {"num_tokens": int(k)}) for k in args.chains.split(",") if k]
    for t in filter(None, args.trees.split(",")):
        n, topk, steps = (int(x) for x in t.split(":"))
        configs.append((f"tree {t}", {"num_tokens": n, "topk": topk, "num_steps": steps}))
    for k, spec in configs:
        llm = LLM(None, dtype=args.dtype, max_num_seqs=1,
                  speculative={"method": "eagle3", "model": str(out / "draft"), **spec})
        outs, tps = timed(llm, chats, args.eval_tokens)
        same = [o.token_ids for o in outs] == [o.token_ids for o in base]
        steps = sum(o.outputs[0].spec_steps for o in outs)
        acc = sum(o.outputs[0].spec_accepted for o in outs)
        row = {"mean_accepted_length": round((acc + steps) / max(steps, 1), 3), "tok_s": round(tps, 3),
               "speedup": round(tps / base_tps, 3), "identical_to_plain": same}
        results["eagle3"][k] = row
        print(f"eagle3 k={k}: {row}", flush=True)
    _, again = timed(plain, chats, args.eval_tokens)
    print(f"plain again: {again:.2f} tok/s", flush=True)
    results["plain_tok_s_runs"] = [round(base_tps, 3), round(again, 3)]
    results["plain_tok_s"] = round(max(base_tps, again), 3)
    for row in results["eagle3"].values():
        row["speedup"] = round(row["tok_s"] / results["plain_tok_s"], 3)
    print(json.dumps(results["eagle3"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    results["depth_accuracy"] = depth_accuracy(plain, str(out / "draft"), base)
    print(f"held-out draft accuracy at chain depth 1..5: {results['depth_accuracy']}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    ex = extraction.make_examples(1, seed=5)[0]["messages"][:1]
    prompt = [plain.render_chat(ex)]
    eb, etps = timed(plain, prompt, 64)
    ng = LLM(None, dtype=args.dtype, max_num_seqs=1, speculative={"method": "ngram", "num_tokens": 4})
    eo, ntps = timed(ng, prompt, 64)
    etps = max(etps, timed(plain, prompt, 64)[1])  # as above: the faster plain run is the baseline
    o = eo[0].outputs[0]
    results["ngram_extraction"] = {"plain_tok_s": round(etps, 3), "ngram_tok_s": round(ntps, 3),
                                   "speedup": round(ntps / etps, 3), "mean_accepted_length": o.mean_accepted_length,
                                   "identical_to_plain": eo[0].token_ids == eb[0].token_ids, "text": eo[0].text}
    print(json.dumps(results["ngram_extraction"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
