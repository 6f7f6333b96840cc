"""lm-evaluation-harness scores the server as it scores the reference: its ``local-completions`` model
(through ``qwen3lab serve``'s echo / logprobs / tokenizer endpoints) against its own ``hf`` model, on the
real SmolLM2 GGUF, for a multiple-choice task and a generation task written here as local files."""

from __future__ import annotations

import json
import os

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval==0.4.13)")

from serve_fixtures import ServerThread  # noqa: E402

from qwen3lab import LLM  # noqa: E402
from qwen3lab.serve import ServerConfig, build_app  # noqa: E402

FACTS = [("the capital of France", ["Paris", "Berlin", "Rome", "Madrid"], 0),
         ("the largest planet", ["Mars", "Jupiter", "Venus", "Mercury"], 1),
         ("the colour of the sky on a clear day", ["green", "red", "blue", "yellow"], 2),
         ("the number of days in a week", ["five", "six", "ten", "seven"], 3),
         ("the animal that says moo", ["cow", "cat", "dog", "duck"], 0),
         ("the opposite of hot", ["warm", "cold", "big", "fast"], 1),
         ("the season after winter", ["autumn", "summer", "spring", "night"], 2),
         ("the metal gold's symbol", ["Ag", "Fe", "Cu", "Au"], 3),
         ("the first letter of the alphabet", ["A", "Z", "M", "Q"], 0),
         ("the language spoken in Spain", ["French", "Spanish", "German", "Dutch"], 1)]
SUMS = [(a, b) for a, b in [(1, 1), (2, 3), (4, 4), (3, 5), (6, 2), (7, 1), (5, 5), (9, 0)]]


def _write_tasks(folder) -> None:
    mc = [{"question": f"What is {q}?", "choices": c, "label": lab} for q, c, lab in FACTS]
    gen = [{"question": f"Question: What is {a} plus {b}?\nAnswer:", "answer": f" {a + b}"} for a, b in SUMS]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    (folder / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (folder / "toy_gen.yaml").write_text(f"""task: toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")


def _evaluate(model: str, model_args: dict, folder):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=["toy_mc", "toy_gen"],
                           task_manager=TaskManager(include_path=str(folder)), log_samples=True,
                           batch_size=1, random_seed=0, numpy_random_seed=0, torch_random_seed=0)


def _logliks(result) -> list[float]:
    return [r[0] for s in sorted(result["samples"]["toy_mc"], key=lambda s: s["doc_id"]) for r in
            (x[0] for x in s["resps"])]


@pytest.mark.slow  # two harness runs over the real 135M model: about a minute
def test_local_completions_equals_hf(tmp_path, monkeypatch):
    from qwen3lab.weights.default_model import smollm2_gguf_path

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gguf = smollm2_gguf_path()
    _write_tasks(tmp_path)
    hf = _evaluate("hf", {"pretrained": str(gguf.parent), "gguf_file": gguf.name, "dtype": "float32",
                          "device": "cpu"}, tmp_path)
    llm = LLM(str(gguf), dtype="float32", kv_cache_memory_gb=0.2)
    name = str(gguf)  # served under the --model value, as the harnesses send it
    with ServerThread(build_app(llm, ServerConfig(served_model_names=[name]))) as s:
        ours = _evaluate("local-completions", {"model": name, "base_url": f"{s.url}/v1/completions",
                                               "num_concurrent": 1, "max_retries": 1}, tmp_path)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["toy_mc"][metric] == hf["results"]["toy_mc"][metric], metric
    assert ours["results"]["toy_gen"]["exact_match,none"] == hf["results"]["toy_gen"]["exact_match,none"]
    a, b = _logliks(ours), _logliks(hf)
    assert len(a) == len(b) == 4 * len(FACTS)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    gen_a = [s["resps"] for s in sorted(ours["samples"]["toy_gen"], key=lambda s: s["doc_id"])]
    gen_b = [s["resps"] for s in sorted(hf["samples"]["toy_gen"], key=lambda s: s["doc_id"])]
    assert gen_a == gen_b
    print("acc", ours["results"]["toy_mc"]["acc,none"], "acc_norm", ours["results"]["toy_mc"]["acc_norm,none"],
          "exact_match", ours["results"]["toy_gen"]["exact_match,none"], "max |dloglik|",
          max(abs(x - y) for x, y in zip(a, b)))
