"""Training-free choice of the layers that keep full attention (NLL-guided, arXiv 2606.27791).

For each layer in turn, only that layer is switched to the sliding window (the rest stay as loaded),
the reference answers of long prompts are teacher-forced through the engine's scoring path (prefill
only, log-probabilities of the answer tokens), and the rise of the mean answer-token NLL over the
unchanged model is that layer's score. The ``budget`` layers whose switch hurts most keep full
attention; the result is the ``--attention`` JSON for that layout, with the scores.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import hybrid_attention


def calibration_rows(data: str | None, samples: int, length: int, count) -> list[dict]:
    """``data``: a jsonl of ``messages`` (or ``prompt``) and ``answer``; None: generated retrieval
    samples of about ``length`` tokens (seed 1, apart from ``qwen3lab eval``'s seed 2)."""
    if data is None:
        from .eval.retrieval import make_samples

        return [{"messages": r["messages"], "answer": ", ".join(r["answers"])}
                for r in make_samples(samples, length, seed=1, count=count)]
    rows = []
    for n, line in enumerate(Path(data).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "answer" not in row or not ("messages" in row or "prompt" in row):
            raise ValueError(f"{data} line {n}: needs 'answer' and 'messages' (or 'prompt')")
        rows.append({"messages": row.get("messages") or [{"role": "user", "content": row["prompt"]}],
                     "answer": str(row["answer"])})
    if not rows:
        raise ValueError(f"{data}: no calibration samples")
    return rows[:samples]


def _answer_nll(backend, items) -> list[float]:
    got = {key: (ll, n) for key, ll, n in backend.loglikelihood(items)}
    return [-got[key][0] / max(got[key][1], 1) for key, _, _ in items]


def select(llm, rows: list[dict], budget: int, window: int, sinks: int = 0) -> dict:
    from .eval.backends import LocalBackend

    base = llm.config
    n = base.num_hidden_layers
    if not 0 < budget <= n:
        raise ValueError(f"budget {budget}: must be between 1 and the model's {n} layers")
    backend = LocalBackend(llm)
    items = [(str(i), llm.render_chat(r["messages"], enable_thinking=False), r["answer"]) for i, r in enumerate(rows)]
    reference = _answer_nll(backend, items)
    scores = []
    try:
        for layer in tqdm(range(n), desc="layers", unit="layer"):
            types = tuple("sliding_attention" if i == layer else t for i, t in enumerate(base.layer_types))
            hybrid_attention.set_layout(llm, dataclasses.replace(base, layer_types=types, sliding_window=window,
                                                                 sink_tokens=sinks))
            nll = _answer_nll(backend, items)
            scores.append(sum(a - b for a, b in zip(nll, reference)) / len(nll))
    finally:
        hybrid_attention.set_layout(llm, base)
    ranking = sorted(range(n), key=lambda i: -scores[i])
    return {"attention": {"sliding_window": window, "full_layers": sorted(ranking[:budget]), "sink_tokens": sinks,
                          "full_attention_decode": False},
            "ranking": ranking, "nll_rise": scores, "reference_nll": sum(reference) / len(reference),
            "samples": len(rows), "date": time.strftime("%Y-%m-%d %H:%M")}


def evenly_spaced(n_layers: int, budget: int, offset: int = 1) -> list[int]:
    """SWAA's periodic layouts: every (n / budget)-th layer from ``offset``."""
    step = n_layers / budget
    return sorted({min(n_layers - 1, int(offset + k * step)) for k in range(budget)})


def plot(result: dict, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, keep = result["nll_rise"], set(result["attention"]["full_layers"])
    fig, ax = plt.subplots(figsize=(max(6, len(scores) * 0.28), 3.2))
    ax.bar(range(len(scores)), scores, color=["#c0392b" if i in keep else "#7f8c8d" for i in range(len(scores))])
    ax.set_xlabel("layer switched to the sliding window")
    ax.set_ylabel("answer NLL rise (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="black", linewidth=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
