"""Per-sample scores, and the aggregates with their standard errors.

Maths: the final answer is the last ``\\boxed{}`` after any ``</think>`` (else the last number), compared
with ``math-verify``. Extraction: the first JSON object of the answer against the record, exact
(canonical JSON) and per field (precision, recall, F1). Multiple choice: lm-evaluation-harness's
``acc`` (highest log-likelihood) and ``acc_norm`` (log-likelihood per byte of the choice).
"""

from __future__ import annotations

import json
import math
import re


def answer_text(completion: str) -> str:
    """What follows the reasoning: the text after the last ``</think>``."""
    return completion.split("</think>")[-1]


def extract_final_answer(completion: str) -> str | None:
    text = answer_text(completion)
    boxed = _boxed(text)
    if boxed:
        return boxed[-1]
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return numbers[-1] if numbers else None


def _boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, nested braces included."""
    out, i = [], text.find("\\boxed{")
    while i >= 0:
        depth, j = 1, i + len("\\boxed{")
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            out.append(text[i + len("\\boxed{"): j - 1])
        i = text.find("\\boxed{", j)
    return out


def math_equal(answer: str | None, gold) -> bool:
    if answer is None:
        return False
    from math_verify import parse, verify

    return bool(verify(parse("$" + str(gold) + "$"), parse("$" + answer + "$")))


def first_json_object(completion: str):
    text = answer_text(completion).strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj = json.JSONDecoder().raw_decode(text[start:])[0]
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def extraction_scores(obj: dict | None, record: dict) -> dict:
    """exact (canonical JSON equal), and field precision / recall / F1 over (key, value) pairs."""
    got = {(k, canonical(v)) for k, v in (obj or {}).items()}
    want = {(k, canonical(v)) for k, v in record.items()}
    hit = len(got & want)
    p = hit / len(got) if got else 0.0
    r = hit / len(want) if want else 1.0
    return {"exact": float(obj is not None and canonical(obj) == canonical(record)), "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def choice_scores(logliks: list[float], choices: list[str], label: int) -> dict:
    best = max(range(len(choices)), key=lambda i: logliks[i])
    per_byte = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(logliks, choices)]
    best_norm = max(range(len(choices)), key=lambda i: per_byte[i])
    return {"acc": float(best == label), "acc_norm": float(best_norm == label)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if not n:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
