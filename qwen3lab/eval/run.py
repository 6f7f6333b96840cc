"""The evaluation loop: samples of one task through a backend, each written as it finishes, then a summary.

``out/<task>/samples.jsonl`` holds one line per sample (its prompt, outputs, extracted answers and
scores); a rerun with the same ``out`` skips the samples already there. ``summary`` averages the
per-sample scores and gives each its standard error over samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .scoring import (answer_text, choice_scores, extract_final_answer, extraction_scores, first_json_object,
                      math_equal, mean_stderr, pass_at_k)
from .tasks import MATH_SUFFIX, Task
from .tool_calls import check_calls, prompted


def _messages(row: dict, kind: str) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    text = {"math": lambda: row["problem"] + MATH_SUFFIX, "extraction": lambda: row["input"],
            "tool_call": lambda: row["question"], "retrieval": lambda: row["prompt"]}[kind]()
    return [{"role": "user", "content": text}]


def _score_generated(kind: str, row: dict, outputs: list[str]) -> dict:
    if kind == "math":
        answers = [extract_final_answer(o) for o in outputs]
        correct = [float(math_equal(a, row["answer"])) for a in answers]
        k = len(correct)
        return {"answers": answers, "correct": correct,
                "scores": {f"avg@{k}": sum(correct) / k, f"pass@{k}": pass_at_k(k, int(sum(correct)), k)}}
    if kind == "tool_call":
        from ..chat.parser import parse_output

        calls = [parse_output(answer_text(o), thinking=False).tool_calls for o in outputs]
        checked = [check_calls(c, row["ground_truth"], row["tools"]) for c in calls]
        return {"answers": [[c["function"] for c in cs] for cs in calls], "reasons": [r for _, r in checked],
                "scores": {"accuracy": sum(ok for ok, _ in checked) / len(checked)}}
    if kind == "retrieval":
        from .retrieval import score

        replies = [answer_text(o) for o in outputs]
        found = [score(r, row["answers"]) for r in replies]
        return {"answers": replies, "scores": {"match": sum(found) / len(found)}}
    objs = [first_json_object(o) for o in outputs]
    per = [extraction_scores(o, row["record"]) for o in objs]
    return {"answers": objs, "scores": {m: sum(p[m] for p in per) / len(per) for m in per[0]}}


def evaluate(task: Task, backend, out: str | Path, n: int = 1, sampling: dict | None = None,
             thinking: bool | None = None) -> dict:
    """Run ``task`` (``n`` samples per problem for generated kinds) and return its summary."""
    folder = Path(out) / task.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["id"]] = rec
    todo = [r for r in task.samples if r["id"] not in done]
    rows = {r["id"]: r for r in task.samples}
    with path.open("a") as f:
        def write(rec: dict) -> None:
            done[rec["id"]] = rec
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()

        if task.kind in ("math", "extraction", "tool_call", "retrieval"):
            native = getattr(backend, "renders_tools", True)

            def item(r):
                if task.kind != "tool_call":
                    return r["id"], _messages(r, task.kind)
                if native:
                    return r["id"], _messages(r, task.kind), r["tools"]
                return r["id"], prompted(_messages(r, task.kind), r["tools"])

            items = [item(r) for r in todo]
            sent = {it[0]: it[1] for it in items}
            for key, outputs in backend.generate(items, dict(sampling or {}), n, thinking):
                row = rows[key]
                target = row.get("answer", row.get("record", row.get("ground_truth", row.get("answers"))))
                write({"id": key, "prompt": sent[key], "outputs": outputs, "target": target,
                       **_score_generated(task.kind, row, outputs)})
        elif task.kind == "multi_turn":
            from .multi_turn import Dialog

            native = getattr(backend, "renders_tools", True)
            dialogs = {r["id"]: Dialog(r, native, task.name) for r in todo}
            for key in backend.converse(dialogs, dict(sampling or {}), thinking):
                d = dialogs.pop(key)
                write({"id": key, "prompt": d.transcript()[0], "turns": d.log, "target": rows[key]["ground_truth"],
                       **d.score()})
        elif task.kind == "multiple_choice":
            items = [(f"{r['id']}\t{i}", r["question"], " " + c) for r in todo for i, c in enumerate(r["choices"])]
            got: dict[str, dict[int, float]] = {}
            for key, ll, _ in backend.loglikelihood(items):
                sid, i = key.split("\t")
                got.setdefault(sid, {})[int(i)] = ll
                row = rows[sid]
                if len(got[sid]) == len(row["choices"]):
                    by_choice = got.pop(sid)
                    lls = [by_choice[j] for j in range(len(row["choices"]))]
                    write({"id": sid, "prompt": row["question"], "choices": row["choices"], "target": row["label"],
                           "logliks": lls, "answer": max(range(len(lls)), key=lambda j: lls[j]),
                           "scores": choice_scores(lls, row["choices"], row["label"])})
        else:  # perplexity
            for key, ll, count in backend.loglikelihood([(r["id"], "", r["text"]) for r in todo]):
                write({"id": key, "loglik": ll, "tokens": count, "scores": {"nll_per_token": -ll / max(count, 1)}})
    return summarize(task, [done[r["id"]] for r in task.samples if r["id"] in done], path)


def summarize(task: Task, records: list[dict], path: Path) -> dict:
    metrics = {}
    for name in records[0]["scores"] if records else []:
        mean, se = mean_stderr([r["scores"][name] for r in records])
        metrics[name] = {"value": mean, "stderr": se}
    if task.kind == "perplexity" and records:
        total = sum(r["tokens"] for r in records)
        metrics["perplexity"] = {"value": math.exp(-sum(r["loglik"] for r in records) / total), "stderr": None}
    return {"task": task.name, "kind": task.kind, "samples": len(records), "metrics": metrics,
            "samples_file": str(path)}
