"""Task files and the built-in task sets.

A task is a kind plus its samples. Kinds and the fields each sample needs:
  ``math``          ``problem`` (or ``messages``) and ``answer``: generated, final answer checked
  ``extraction``    ``input`` (or ``messages``) and ``record`` (a JSON object): generated, compared as JSON
  ``multiple_choice``  ``question``, ``choices`` (list of strings) and ``label`` (index): log-likelihood
  ``perplexity``    ``text``: the log-likelihood of every token
  ``tool_call``     ``question`` (or ``messages``), ``tools`` (OpenAI function tools) and ``ground_truth``
                    (BFCL's possible answers): the calls made, checked as BFCL's AST checker does
  ``multi_turn``    ``question`` (the user turns), ``initial_config`` (simulated APIs and their state) and
                    ``ground_truth`` (each turn's calls): played against the APIs, scored by end state
                    and call results as BFCL's multi-turn checker does (``multi_turn``)
  ``retrieval``     ``prompt`` (or ``messages``) and ``answers`` (strings the reply must contain): RULER's
                    string-match-all
Files are jsonl or parquet; ``kind:path`` names one (``math:my.jsonl``). Built in, generated so that
nothing is downloaded: ``arithmetic`` (math), ``extraction``, ``arithmetic_mc`` (multiple choice),
``corpus`` (perplexity of the shipped text), ``tools`` (single-turn tool calls), ``tools_multi``
(three-turn conversations with a file system and a bank) and ``retrieval`` (long-context needles,
multi-key lookups and variable tracking, ``retrieval@N`` for a context of about N tokens; 4096 by
default; ``retrieval``). The generated sets
use seed 2, the held-out seed of the training recipes (``scripts/report_*.py`` train on seed 1).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

KINDS = {"math": ("answer",), "extraction": ("record",), "multiple_choice": ("question", "choices", "label"),
         "perplexity": ("text",), "tool_call": ("tools", "ground_truth"),
         "multi_turn": ("question", "initial_config", "ground_truth"), "retrieval": ("answers",)}
PROMPT_FIELDS = {"math": ("problem", "messages"), "extraction": ("input", "messages"),
                 "tool_call": ("question", "messages"), "retrieval": ("prompt", "messages")}
BUILTIN = {"arithmetic": "math", "extraction": "extraction", "arithmetic_mc": "multiple_choice",
           "corpus": "perplexity", "tools": "tool_call", "tools_multi": "multi_turn"}
_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
_CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount of money between currencies",
    "parameters": {"type": "object", "properties": {
        "amount": {"type": "number"}, "from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
        "required": ["amount", "from_currency", "to_currency"]}}}
# Qwen's recommended instruction for maths, added to a bare ``problem``.
MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Task:
    name: str
    kind: str
    samples: list[dict]  # each with a unique "id"


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from None
    return rows


def _check(rows: list[dict], kind: str, source: str) -> list[dict]:
    for n, row in enumerate(rows, start=1):
        missing = [f for f in KINDS[kind] if f not in row]
        prompt = PROMPT_FIELDS.get(kind)
        if prompt and not any(f in row for f in prompt):
            missing.append(" or ".join(prompt))
        if missing:
            raise ValueError(f"{source} sample {n}: missing field {', '.join(repr(m) for m in missing)} "
                             f"for a {kind} task (needs {', '.join(KINDS[kind])})")
        if kind == "multi_turn":
            from .environments import build

            build(row["initial_config"], f"{source} sample {n}")
        if kind == "multiple_choice" and not (isinstance(row["choices"], list) and isinstance(row["label"], int)
                                              and 0 <= row["label"] < len(row["choices"])):
            raise ValueError(f"{source} sample {n}: 'label' must index 'choices'")
        row.setdefault("id", str(n - 1))
    return rows


def _arithmetic_mc(n: int, seed: int = 0) -> list[dict]:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        answer = a + b
        wrong = rng.sample([answer + d for d in (-10, -2, -1, 1, 2, 10)], 3)
        choices = [str(c) for c in [answer, *wrong]]
        rng.shuffle(choices)
        rows.append({"question": f"Question: What is {a} plus {b}?\nAnswer:", "choices": choices,
                     "label": choices.index(str(answer))})
    return rows


def _tools(n: int, seed: int = 2) -> list[dict]:
    rng, rows = random.Random(seed), []
    cities = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Seoul", "Perth"]
    money = [("USD", "EUR"), ("EUR", "JPY"), ("GBP", "USD"), ("CHF", "CAD")]
    for _ in range(n):
        if rng.random() < 0.5:
            city = rng.choice(cities)
            unit = rng.choice([None, "celsius", "fahrenheit"])
            question = f"What is the weather in {city} right now" + (f", in {unit}?" if unit else "?")
            truth = [{"get_weather": {"city": [city], "unit": [unit] if unit else ["", "celsius", "fahrenheit"]}}]
        else:
            amount, (a, b) = rng.choice([20, 75, 120, 300]), rng.choice(money)
            question = f"How much is {amount} {a} in {b}?"
            truth = [{"convert_currency": {"amount": [amount, float(amount)], "from_currency": [a],
                                           "to_currency": [b]}}]
        rows.append({"question": question, "tools": [_WEATHER, _CONVERT], "ground_truth": truth})
    return rows


def _multi_turn(n: int, seed: int = 2) -> list[dict]:
    rng, rows = random.Random(seed), []
    folders, words = ["reports", "photos", "drafts", "archive", "music"], ["budget", "plan", "todo", "ideas"]
    payees = ["Alice", "Bob", "Carmen", "Dev"]
    for i in range(n):
        if i % 3 == 0:
            folder, word = rng.choice(folders), rng.choice(words)
            note = f"Meeting moved to {rng.choice(['Monday', 'Tuesday', 'Friday'])}."
            rows.append({"initial_config": {"FileSystem": {"root": {"home": {"notes.txt": note, "old": {}}},
                                                            "cwd": ["home"]}},
                         "question": [f"Make a folder called {folder} here and go into it.",
                                      f"Save the text '{word} for {2025 + i % 3}' in a file named {word}.txt.",
                                      "Now go back up one folder and tell me what notes.txt says."],
                         "ground_truth": [[f"mkdir(dir_name='{folder}')", f"cd(folder='{folder}')"],
                                          [f"echo(content='{word} for {2025 + i % 3}', file_name='{word}.txt')"],
                                          ["cd(folder='..')", "cat(file_name='notes.txt')"]]})
        elif i % 3 == 1:
            checking, move, bill = rng.choice([800, 1200, 2500]), rng.choice([50, 100, 250]), rng.choice([20, 35, 60])
            payee = rng.choice(payees)
            rows.append({"initial_config": {"Bank": {"accounts": {"checking": checking, "savings": 3000}}},
                         "question": ["How much money is in my checking account?",
                                      f"Move {move} from checking to savings.",
                                      f"Pay {payee} {bill} from my savings."],
                         "ground_truth": [["get_balance(account='checking')"],
                                          [f"transfer(from_account='checking', to_account='savings', amount={move})"],
                                          [f"pay(account='savings', payee='{payee}', amount={bill})"]]})
        else:
            new, folder = rng.choice(words) + ".txt", rng.choice(folders)
            rows.append({"initial_config": {"FileSystem": {"root": {"report.txt": "Q3 totals", "draft.txt": "",
                                                                     folder: {}}},
                                            "Bank": {"accounts": {"checking": 640, "savings": 90}}},
                         "question": [f"Rename report.txt to {new}.", f"Move {new} into the {folder} folder.",
                                      "Delete draft.txt, then tell me my savings balance."],
                         "ground_truth": [[f"mv(source='report.txt', destination='{new}')"],
                                          [f"mv(source='{new}', destination='{folder}')"],
                                          ["rm(file_name='draft.txt')", "get_balance(account='savings')"]]})
    return rows


def builtin(name: str, limit: int | None) -> list[dict]:
    n = limit or 100
    if name == "arithmetic":
        from ..data.arithmetic import make_problems

        return [{"messages": r["messages"], "answer": r["answer"]} for r in make_problems(n, seed=2)]
    if name == "extraction":
        from ..data.extraction import make_examples

        return [{"messages": r["messages"][:1], "record": r["record"]} for r in make_examples(n, seed=2)]
    if name == "arithmetic_mc":
        return _arithmetic_mc(n)
    if name == "tools":
        return _tools(n)
    if name == "tools_multi":
        return _multi_turn(n)
    from ..quant.quality import CORPUS

    paragraphs = [p for p in CORPUS.read_text().split("\n\n") if p.strip()]
    return [{"text": p} for p in paragraphs[:n]]


def load_task(spec: str, limit: int | None = None, count=None) -> Task:
    """``spec``: a built-in name or ``kind:path``; ``count``: the model's token counter, for sets
    generated at a length in tokens (``retrieval@N``)."""
    if spec == "retrieval" or spec.startswith("retrieval@"):
        from .retrieval import make_samples

        length = spec.partition("@")[2] or "4096"
        if not length.isdigit() or int(length) < 256:
            raise ValueError(f"task {spec!r}: the length after '@' must be a number of tokens >= 256")
        rows = make_samples(limit or 12, int(length), seed=2, count=count)
        return Task(spec.replace("@", "_"), "retrieval", _check(rows, "retrieval", spec))
    if spec in BUILTIN:
        kind, rows, name = BUILTIN[spec], builtin(spec, limit), spec
    else:
        kind, sep, path = spec.partition(":")
        if not sep or kind not in KINDS:
            raise ValueError(f"unknown task {spec!r}: give a built-in task ({', '.join(BUILTIN)}, retrieval@N) or KIND:FILE "
                             f"with KIND one of {', '.join(KINDS)}")
        rows, name = _rows(Path(path)), Path(path).stem
    rows = _check(rows[:limit] if limit else rows, kind, spec)
    return Task(name, kind, rows)
