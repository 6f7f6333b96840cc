"""Train an EAGLE3 head for the real SmolLM2-135M-Instruct on CPU, then measure it. One command:

    python benchmarks/eagle3_smollm2.py --out runs/eagle3-smollm2 [--train-prompts 32 --steps 120]

Steps: (1) the target answers training prompts (qwen3lab.data.eagle3_prompts) greedily through the
batched engine; chunks of the shipped story corpus are added as given responses (teacher-forced,
cheap: one target forward each); (2) ``train_eagle3`` (TTT objective, see qwen3lab/train/eagle3.py);
(3) on held-out prompts (subjects never trained on), greedy decoding one request at a time: plain,
then EAGLE3 with k = 1..5 (outputs must equal plain), mean accepted length and wall-clock tokens/s;
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
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train.jsonl"
    recs = [{"prompt": p} for p in eagle3_prompts.prompts(limit=args.train_prompts)] + corpus_records(args.corpus_chunks)
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    t0 = time.time()
    summary = train_eagle3(Eagle3TrainConfig(data=str(data), out=str(out / "draft"), steps=args.steps,
                                             draft_vocab=args.draft_vocab, max_tokens=args.gen_tokens,
                                             batch_size=8, max_num_seqs=32, log_every=10),
                           log=lambda m: print(m, flush=True))
    results = {"args": vars(args), "train_total_s": round(time.time() - t0, 1),
               "train": {k: v for k, v in summary.items() if k != "history"}, "history": summary["history"]}
    print(json.dumps(results["train"]), flush=True)

    plain = LLM(None, dtype="float32", max_num_seqs=1)
    chats = [plain.render_chat([{"role": "user", "content": p}])
             for p in eagle3_prompts.prompts(held_out=True, limit=args.eval_prompts)]
    base, base_tps = timed(plain, chats, args.eval_tokens)
    results["plain_tok_s"] = round(base_tps, 3)
    print(f"plain: {base_tps:.2f} tok/s", flush=True)
    results["eagle3"] = {}
    for k in range(1, 6):
        llm = LLM(None, dtype="float32", max_num_seqs=1,
                  speculative={"method": "eagle3", "model": str(out / "draft"), "num_tokens": k})
        outs, tps = timed(llm, chats, args.eval_tokens)
        same = [o.token_ids for o in outs] == [o.token_ids for o in base]
        steps = sum(o.outputs[0].spec_steps for o in outs)
        acc = sum(o.outputs[0].spec_accepted for o in outs)
        row = {"mean_accepted_length": round((acc + steps) / max(steps, 1), 3), "tok_s": round(tps, 3),
               "speedup": round(tps / base_tps, 3), "identical_to_plain": same}
        results["eagle3"][k] = row
        print(f"eagle3 k={k}: {row}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    ex = extraction.make_examples(1, seed=5)[0]["messages"][:1]
    prompt = [plain.render_chat(ex)]
    eb, etps = timed(plain, prompt, 64)
    ng = LLM(None, dtype="float32", max_num_seqs=1, speculative={"method": "ngram", "num_tokens": 4})
    eo, ntps = timed(ng, prompt, 64)
    o = eo[0].outputs[0]
    results["ngram_extraction"] = {"plain_tok_s": round(etps, 3), "ngram_tok_s": round(ntps, 3),
                                   "speedup": round(ntps / etps, 3), "mean_accepted_length": o.mean_accepted_length,
                                   "identical_to_plain": eo[0].token_ids == eb[0].token_ids, "text": eo[0].text}
    print(json.dumps(results["ngram_extraction"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
