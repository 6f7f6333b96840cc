"""``qwen3lab bench --speculative JSON``: plain against speculative decoding, same prompts, one run.

Both engines load the same model (the real SmolLM2-135M-Instruct by default: random weights would
make any draft's acceptance meaningless) and decode the same chat prompts greedily, one request at
a time (the latency setting speculation is for). Decode tok/s counts tokens after the first, from
the first token's arrival, so prefill is left out. Speculative rows add the mean accepted length
(accepted drafts + the target's own token, per verification step), the fraction of drafts
accepted and whether the output equals plain decoding (it must).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path


def _decode(llm, prompts: list[str], max_tokens: int) -> dict:
    from ..sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    llm.engine.spec_stats.update(steps=0, drafted=0, accepted=0)  # not counted
    tokens, seconds, outputs = 0, 0.0, []
    for p in prompts:
        ids, stamps = [], []
        for delta in llm.stream(p, params):
            ids.extend(delta.token_ids)
            stamps.append(time.perf_counter())
        outputs.append(ids)
        tokens += len(ids) - 1  # the first token comes from prefill
        seconds += stamps[-1] - stamps[0]
    stats = llm.engine.spec_stats
    steps, drafted, accepted = stats["steps"], stats["drafted"], stats["accepted"]
    row = {"decode_tok_s": tokens / seconds if seconds else None, "tokens": tokens, "outputs": outputs}
    if steps:
        row.update(spec_steps=steps, mean_accepted_length=(accepted + steps) / steps,
                   draft_acceptance=accepted / max(drafted, 1))
    return row


def compare_speculative(spec: dict, model: str | None = None, num_prompts: int = 4, max_tokens: int = 128,
                        dtype: str = "float32", out: str | None = None) -> dict:
    from ..data import eagle3_prompts
    from ..llm import LLM

    rows = {}
    for name, speculative in (("plain", None), ("speculative", spec)):
        llm = LLM(model, dtype=dtype, max_num_seqs=1, speculative=speculative)
        if name == "plain":
            prompts = [llm.render_chat([{"role": "user", "content": p}])
                       for p in eagle3_prompts.prompts(held_out=True, limit=num_prompts)]
        rows[name] = _decode(llm, prompts, max_tokens)
        del llm
        gc.collect()
    plain, fast = rows["plain"], rows["speculative"]
    report = {"model": model or "SmolLM2-135M-Instruct (embedded)", "speculative": spec, "dtype": dtype,
              "prompts": num_prompts, "max_tokens": max_tokens,
              "plain_decode_tok_s": plain["decode_tok_s"], "speculative_decode_tok_s": fast["decode_tok_s"],
              "speedup": fast["decode_tok_s"] / plain["decode_tok_s"] if plain["decode_tok_s"] and fast["decode_tok_s"]
              else None,
              "identical_to_plain": fast["outputs"] == plain["outputs"],
              **{k: fast.get(k) for k in ("spec_steps", "mean_accepted_length", "draft_acceptance")}}
    print_report(report)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def print_report(r: dict) -> None:
    print(f"{r['model']} | {r['dtype']} | {r['prompts']} prompts x {r['max_tokens']} tokens, greedy, batch 1 | "
          f"speculative {json.dumps(r['speculative'])}")
    print(f"{'decode':<13}{'tok/s':>8}{'accepted len':>14}{'draft acc':>11}")
    def num(v, fmt):  # a run whose outputs all stopped after one token has no decode rate
        return fmt.format(v) if v is not None else "-"

    acc_len, acc = r.get("mean_accepted_length"), r.get("draft_acceptance")
    print(f"{'plain':<13}{num(r['plain_decode_tok_s'], '{:.2f}'):>8}{'-':>14}{'-':>11}")
    print(f"{'speculative':<13}{num(r['speculative_decode_tok_s'], '{:.2f}'):>8}"
          f"{num(acc_len, '{:.3f}'):>14}{num(acc, '{:.3f}'):>11}")
    print(f"speculative / plain: {num(r['speedup'], '{:.2f}x')}; outputs identical to plain: "
          f"{'yes' if r['identical_to_plain'] else 'NO'}")
