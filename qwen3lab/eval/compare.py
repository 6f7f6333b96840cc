"""``qwen3lab eval compare A.json B.json``: per-task, per-metric deltas of two runs on the same samples.

Samples are paired by id, so the test is on the per-sample differences: their mean, its standard
error, and a two-sided p-value from the normal approximation (with tens of samples or more, what a
paired t-test gives); only samples present in both runs count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .scoring import mean_stderr


def _samples(summary: dict) -> dict[str, dict]:
    path = Path(summary["samples_file"])
    if not path.exists():
        raise FileNotFoundError(f"{path} (named by the summary) is missing: compare needs each run's samples")
    return {r["id"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def compare(a_path: str | Path, b_path: str | Path) -> list[dict]:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    rows = []
    for ta in a["tasks"]:
        tb = next((t for t in b["tasks"] if t["task"] == ta["task"]), None)
        if tb is None:
            continue
        sa, sb = _samples(ta), _samples(tb)
        ids = sorted(set(sa) & set(sb))
        for metric in ta["metrics"]:
            if not ids or metric not in sa[ids[0]].get("scores", {}) or metric not in sb[ids[0]].get("scores", {}):
                continue
            diffs = [sb[i]["scores"][metric] - sa[i]["scores"][metric] for i in ids]
            delta, se = mean_stderr(diffs)
            if se and se > 0:
                p = math.erfc(abs(delta / se) / math.sqrt(2))
            else:
                p = 1.0 if delta == 0 else 0.0
            mean_a = sum(sa[i]["scores"][metric] for i in ids) / len(ids)
            mean_b = sum(sb[i]["scores"][metric] for i in ids) / len(ids)
            rows.append({"task": ta["task"], "metric": metric, "a": mean_a, "b": mean_b, "delta": delta,
                         "stderr": se, "p_value": p, "paired_samples": len(ids)})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'task':<16}{'metric':<16}{'A':>9}{'B':>9}{'B - A':>9}{'stderr':>9}{'p':>8}{'n':>6}")
    for r in rows:
        se = "-" if r["stderr"] is None or r["stderr"] != r["stderr"] else f"{r['stderr']:.4f}"
        print(f"{r['task']:<16}{r['metric']:<16}{r['a']:9.4f}{r['b']:9.4f}{r['delta']:+9.4f}{se:>9}"
              f"{r['p_value']:8.3f}{r['paired_samples']:6d}")
