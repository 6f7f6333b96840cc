"""``qwen3lab bench eval``: one generation task through ``qwen3lab eval``'s engine backend and through
lm-evaluation-harness's ``hf`` model, on the same checkpoint, prompts and greedy settings.

The task is the shipped ``arithmetic`` set. lm-eval reads the same problems from a jsonl written here
(a ``generate_until`` task with the model's chat template applied, as ``--apply_chat_template`` does),
so both sides render the same chat prompt and decode until the end-of-turn token or ``max_tokens``.
Model loading is outside the timed region on both sides; the time is the whole task. The outputs are
compared sample by sample and the final answers scored with the same checker.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from .report import write_report


def _task_yaml(folder: Path, rows: list[dict], max_tokens: int, stop: str) -> None:
    (folder / "problems.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "content": r["messages"][-1]["content"], "answer": r["answer"]}) + "\n"
        for r in rows))
    (folder / "qwen3lab_arithmetic.yaml").write_text(f"""task: qwen3lab_arithmetic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'problems.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{content}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: [{json.dumps(stop)}]
  max_gen_toks: {max_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
""")


def run_eval_bench(model: str | None, samples: int, max_tokens: int, peer_batch_sizes: tuple[int, ...],
                   max_num_seqs: int, threads: int | None, out: str | None) -> dict:
    import torch

    from ..eval.backends import LocalBackend
    from ..eval.run import evaluate
    from ..eval.scoring import extract_final_answer, math_equal
    from ..eval.tasks import load_task
    from ..llm import LLM
    from ..weights.default_model import smollm2_gguf_path

    if threads:
        torch.set_num_threads(threads)
    path = Path(model) if model else smollm2_gguf_path()
    task = load_task("arithmetic", samples)
    if any(len(r["messages"]) != 1 for r in task.samples):
        raise ValueError("the arithmetic set's samples must be single user turns for lm-eval's chat rendering")
    report = {"model": str(path), "samples": samples, "max_tokens": max_tokens, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}

    llm = LLM(str(path), dtype="float32", max_num_seqs=max_num_seqs, kv_cache_memory_gb=1.0)
    stop = llm.tokenizer.decode([llm.tokenizer.eos_token_id]) if llm.tokenizer.eos_token_id is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"[bench] qwen3lab eval: {samples} problems, greedy, max {max_tokens} tokens", file=sys.stderr)
        t0 = time.perf_counter()
        summary = evaluate(task, LocalBackend(llm), tmp / "ours", 1, {"temperature": 0.0, "max_tokens": max_tokens})
        ours_s = time.perf_counter() - t0
        ours = {r["id"]: r["outputs"][0] for r in map(json.loads, open(summary["samples_file"]))}
        del llm
        report["ours"] = {"seconds": ours_s, "avg@1": summary["metrics"]["avg@1"]["value"]}

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        _task_yaml(tmp, task.samples, max_tokens, stop or "\n\n")
        gguf = {"pretrained": str(path.parent), "gguf_file": path.name} if path.suffix == ".gguf" else \
            {"pretrained": str(path)}
        answers = {r["id"]: r["answer"] for r in task.samples}
        report["peers"] = []
        for bs in peer_batch_sizes:
            lm = HFLM(**gguf, dtype="float32", device="cpu", batch_size=bs)
            print(f"[bench] lm-eval hf, batch size {bs}", file=sys.stderr)
            t0 = time.perf_counter()
            res = simple_evaluate(model=lm, tasks=["qwen3lab_arithmetic"], task_manager=TaskManager(include_path=str(tmp)),
                                  apply_chat_template=True, log_samples=True, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0)
            peer_s = time.perf_counter() - t0
            theirs = {s["doc"]["id"]: s["resps"][0][0] for s in res["samples"]["qwen3lab_arithmetic"]}
            same = sum(ours[k].strip() == theirs[k].strip() for k in ours)
            correct = sum(math_equal(extract_final_answer(theirs[k]), answers[k]) for k in theirs)
            report["peers"].append({"name": f"lm-eval hf (batch {bs})", "seconds": peer_s, "avg@1": correct / len(theirs),
                                    "identical_outputs": same, "ratio": peer_s / ours_s})
            del lm
    print(f"\n{samples} arithmetic problems, greedy, max {max_tokens} new tokens, {report['threads']} threads, "
          f"{path.name} float32")
    print(f"{'engine':<26}{'seconds':>9}{'avg@1':>8}{'same outputs':>14}{'ours faster':>13}")
    print(f"{'qwen3lab eval':<26}{ours_s:9.1f}{report['ours']['avg@1']:8.3f}{'-':>14}{'-':>13}")
    for p in report["peers"]:
        print(f"{p['name']:<26}{p['seconds']:9.1f}{p['avg@1']:8.3f}{p['identical_outputs']:>9d}/{samples:<4d}"
              f"{p['ratio']:12.2f}x")
    write_report(report, out)
    return report
