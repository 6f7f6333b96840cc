"""`qwen3lab eval`: task files and their errors, the scores, and the same task through the engine and
through the server giving the same samples."""

from __future__ import annotations

import json

import pytest
import torch
from serve_fixtures import KEY, folder, server  # noqa: F401 - fixtures

from qwen3lab.cli import main
from qwen3lab.eval.backends import LocalBackend, ServerBackend
from qwen3lab.eval.compare import compare
from qwen3lab.eval.run import evaluate
from qwen3lab.eval.scoring import (choice_scores, extract_final_answer, extraction_scores, math_equal,
                                   mean_stderr, pass_at_k)
from qwen3lab.eval.tasks import Task, load_task
from qwen3lab.eval.environments import build, dispatch
from qwen3lab.eval.multi_turn import Dialog, parse_call
from qwen3lab.eval.tool_calls import check_calls


def test_scores():
    assert extract_final_answer("<think>maybe \\boxed{3}</think>So \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_final_answer("The total is 1,204 apples.") == "1204"
    assert math_equal("\\frac{1}{2}", "0.5") and not math_equal("3", "4") and not math_equal(None, "4")
    s = extraction_scores({"name": "Ana", "age": 30, "city": "Oslo"}, {"name": "Ana", "age": 31, "city": "Oslo"})
    assert s["exact"] == 0 and s["precision"] == s["recall"] == pytest.approx(2 / 3)
    assert extraction_scores({"b": 1, "a": [1, 2]}, {"a": [1, 2], "b": 1})["exact"] == 1
    # acc picks the highest total, acc_norm the highest per byte (lm-eval's definitions).
    assert choice_scores([-4.0, -6.0], ["a", "bbbbbb"], 1) == {"acc": 0.0, "acc_norm": 1.0}
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3) and pass_at_k(4, 0, 2) == 0 and pass_at_k(3, 2, 2) == 1
    assert mean_stderr([1, 0, 1, 0]) == pytest.approx((0.5, (1 / 3 / 4) ** 0.5))


def test_tool_call_checker():
    tools = load_task("tools", 1).samples[0]["tools"]
    truth = [{"get_weather": {"city": ["Paris"], "unit": ["", "celsius", "fahrenheit"]}}]

    def call(name, **args):
        return {"function": {"name": name, "arguments": json.dumps(args)}}

    assert check_calls([call("get_weather", city="paris")], truth, tools) == (True, "ok")  # BFCL's standardizing
    assert check_calls([call("get_weather", city="Paris", unit="celsius")], truth, tools)[0]
    assert check_calls([call("get_weather", city="Lima")], truth, tools)[1].startswith("get_weather: parameter 'city'")
    assert "required parameter 'city'" in check_calls([call("get_weather", unit="celsius")], truth, tools)[1]
    assert "unexpected parameter 'day'" in check_calls([call("get_weather", city="Paris", day=1)], truth, tools)[1]
    assert check_calls([], truth, tools) == (False, "0 call(s), expected 1")
    money = [{"convert_currency": {"amount": [20, 20.0], "from_currency": ["USD"], "to_currency": ["EUR"]}}]
    assert check_calls([call("convert_currency", amount=20, from_currency="USD", to_currency="EUR")], money, tools)[0]
    bad = check_calls([call("convert_currency", amount="20", from_currency="USD", to_currency="EUR")], money, tools)
    assert not bad[0] and "schema says number" in bad[1]
    # The parser reads the calls back from the text both backends produce.
    from qwen3lab.chat.parser import parse_output
    from qwen3lab.eval.tool_calls import as_text

    (parsed,) = parse_output("Sure." + as_text([call("get_weather", city="Oslo")]), thinking=False).tool_calls
    assert json.loads(parsed["function"]["arguments"]) == {"city": "Oslo"}


def test_multi_turn_checker_replays_calls_on_the_simulated_apis():
    (row,) = [r for r in load_task("tools_multi", 3).samples if "Bank" in r["initial_config"]
              and "FileSystem" not in r["initial_config"]]
    assert parse_call("transfer(from_account='checking', to_account='savings', amount=50)") == (
        "transfer", {"from_account": "checking", "to_account": "savings", "amount": 50})

    def play(turns, native=True):
        d = Dialog(row, native_tools=native)
        for calls in turns:
            for step in calls:  # each step: the calls of one model reply, then its results come back
                d.reply("", [{"function": {"name": n, "arguments": json.dumps(a)}} for n, a in step])
            d.reply("Done.", [])
        assert d.done and d.request() is None
        return d

    truth = [[[c] for c in turn] for turn in Dialog(row, True).truth]
    good = play(truth)
    assert good.score()["scores"] == {"accuracy": 1.0, "turn_accuracy": 1.0}
    tool_msgs = [m for m in good.messages if m["role"] == "tool"]
    assert len(tool_msgs) == 3 and json.loads(tool_msgs[0]["content"])["account"] == "checking"
    # The same calls spread over other steps and turns still pass where BFCL's checker passes them ...
    balance, move, pay = (t[0][0] for t in truth)
    assert play([[[balance, move]], [], [[pay]]]).score()["turns_passed"] == [False, False, True]
    # ... a wrong amount leaves another end state, and the turn and sample fail on it.
    wrong = (move[0], {**move[1], "amount": move[1]["amount"] + 1})
    s = play([[[balance]], [[wrong]], [[pay]]]).score()
    assert s["scores"]["accuracy"] == 0 and s["turns_passed"] == [True, False, False]
    assert s["reason"].startswith("turn 1: Bank.accounts is")
    # Not asking for the balance leaves the state right but the ground truth's result unseen.
    s = play([[[("list_accounts", {})]], [[move]], [[pay]]]).score()
    assert s["reason"] == "turn 0: no call of the model returned " + json.dumps(
        {"account": "checking", "balance": float(row["initial_config"]["Bank"]["accounts"]["checking"])})
    # A template without tools: the calls go back as text and the results as a user turn.
    prompted = play(truth, native=False)
    assert prompted.score()["scores"]["accuracy"] == 1.0
    assert "<tool_response>" in prompted.messages[2]["content"] and prompted.messages[2]["role"] == "user"
    assert prompted.transcript()[0][0]["role"] == "system" and prompted.transcript()[1] is None
    # Bad calls are results, not crashes.
    env = build({"FileSystem": {"root": {"a.txt": "x"}}})
    assert dispatch(env, "cat", {"file_name": "b.txt"}) == {"error": "cat: no file 'b.txt' here"}
    assert "missing argument(s) content" in dispatch(env, "echo", {"file_name": "a.txt"})["error"]
    assert dispatch(env, "fly", {}) == {"error": "no function 'fly'"}


def test_bad_task_input_names_the_file_and_field(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl sample 2: missing field 'answer'"):
        load_task(f"math:{bad}")
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        load_task("poetry")
    turns = tmp_path / "t.jsonl"
    turns.write_text(json.dumps({"question": ["hi"], "initial_config": {"GorillaFileSystem": {}},
                                 "ground_truth": [[]]}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl sample 1: unknown environment 'GorillaFileSystem'"):
        load_task(f"multi_turn:{turns}")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task(f"multiple_choice:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(RuntimeError, match=r"cannot reach .* http://127\.0\.0\.1:9"):
        ServerBackend("http://127.0.0.1:9")
    assert main(["eval", "--task", f"math:{bad}"]) == 2


def test_engine_and_server_give_the_same_samples(server, tmp_path):  # noqa: F811
    local = LocalBackend(server.llm.__class__(str(server.llm.model_path), dtype="float32", max_model_len=2048,
                                              kv_cache_memory_gb=0.25))
    remote = ServerBackend(server.url, "tiny", KEY)
    greedy = {"temperature": 0.0, "max_tokens": 8}
    tasks = [load_task("arithmetic_mc", 6), load_task("arithmetic", 4), load_task("corpus", 2), load_task("tools", 3),
             load_task("tools_multi", 3)]
    runs = {}
    for name, backend in (("local", local), ("server", remote)):
        runs[name] = [evaluate(t, backend, tmp_path / name, 1, greedy) for t in tasks]
        (tmp_path / name / "summary.json").write_text(json.dumps({"tasks": runs[name]}))
    for a, b in zip(runs["local"], runs["server"]):
        sa = [json.loads(x) for x in open(a["samples_file"])]
        sb = {r["id"]: r for r in map(json.loads, open(b["samples_file"]))}
        assert a["samples"] == b["samples"] == len(sa)
        for r in sa:
            other = sb[r["id"]]
            if "logliks" in r:
                assert max(abs(x - y) for x, y in zip(r["logliks"], other["logliks"])) < 1e-3
            elif "loglik" in r:
                assert abs(r["loglik"] - other["loglik"]) < 1e-3 and r["tokens"] == other["tokens"]
            elif "turns" in r:
                assert r["turns"] == other["turns"] and r["prompt"] == other["prompt"]
            else:
                assert r["outputs"] == other["outputs"]
            assert r["scores"] == pytest.approx(other["scores"], abs=1e-9)
    # The multiple-choice log-likelihoods are those of transformers on the same weights.
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(server.llm.model_path, dtype=torch.float32).eval()
    row = json.loads(open(runs["local"][0]["samples_file"]).readline())
    tok = server.llm.tokenizer
    for choice, ll in zip(row["choices"], row["logliks"]):
        ctx, whole = tok.encode(row["prompt"], add_special_tokens=False), tok.encode(row["prompt"] + " " + choice,
                                                                                   add_special_tokens=False)
        with torch.no_grad():
            lp = hf(torch.tensor([whole])).logits[0].log_softmax(-1)
        assert abs(sum(float(lp[p - 1, whole[p]]) for p in range(len(ctx), len(whole))) - ll) < 1e-4
    # A rerun resumes: nothing is evaluated twice.
    before = open(runs["local"][0]["samples_file"]).read()
    evaluate(tasks[0], local, tmp_path / "local", 1, greedy)
    assert open(runs["local"][0]["samples_file"]).read() == before
    rows = compare(tmp_path / "local" / "summary.json", tmp_path / "server" / "summary.json")
    assert rows and all(abs(r["delta"]) < 1e-9 for r in rows if r["metric"] != "nll_per_token")


def test_compare_finds_a_paired_difference(tmp_path):
    def run(name, scores):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "s.jsonl").write_text("".join(json.dumps({"id": str(i), "scores": {"acc": s}}) + "\n"
                                                for i, s in enumerate(scores)))
        summary = {"tasks": [{"task": "t", "metrics": {"acc": {}}, "samples_file": str(folder / "s.jsonl")}]}
        (folder / "summary.json").write_text(json.dumps(summary))
        return folder / "summary.json"

    a = run("a", [0, 1] * 50)
    b = run("b", [1, 1] * 50)  # the fine-tune fixed every sample the base got wrong
    (row,) = compare(a, b)
    assert row["delta"] == pytest.approx(0.5) and row["p_value"] < 1e-6 and row["paired_samples"] == 100
    assert Task  # the task type is part of the public surface of qwen3lab.eval.tasks


def test_retrieval_samples_hit_their_length_and_score_by_string_match():
    from qwen3lab.eval.retrieval import score
    from qwen3lab.eval.tasks import load_task
    from qwen3lab.tokenizer import Tokenizer
    from checkpoints import qwen_tokenizer_dir

    tok = Tokenizer.from_dir(qwen_tokenizer_dir())
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    task = load_task("retrieval@2000", 6, count)
    assert task.kind == "retrieval" and [r["variant"] for r in task.samples[:3]] == ["needle", "multikey", "vartrack"]
    for row in task.samples:
        n = count(row["messages"][0]["content"])
        assert 1800 <= n <= 2000, n
        text = row["messages"][0]["content"]
        assert all(a in text for a in row["answers"])  # every answer is findable in the context
    needle = task.samples[0]
    assert score(f"It is {needle['answers'][0]}.", needle["answers"]) == 1.0
    assert score("I do not know.", needle["answers"]) == 0.0
    chain = task.samples[2]["answers"]
    assert score(" ".join(chain[:2]).lower(), chain) == 0.5
    with pytest.raises(ValueError, match="must be a number of tokens"):
        load_task("retrieval@lots")
