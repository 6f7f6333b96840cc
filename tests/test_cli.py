"""The `qwen3lab` command end to end, run as subprocesses (`python -m qwen3lab.cli`).

A tiny random Qwen3 checkpoint (real Qwen3 tokenizer) stands in for a model; greedy CLI output must
equal what the Python API returns for the same request. The embedded default SmolLM2 GGUF is
checked once for a real answer (skipped only when the file cannot be fetched).
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest
from checkpoints import save_reference

from qwen3lab import LLM, SamplingParams
from qwen3lab.cli import main
from qwen3lab.cli.display import print_parsed

GREEDY = ["--temperature", "0", "--max-tokens", "8"]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
    env.pop("QWEN3LAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "qwen3lab.cli", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=300)


@pytest.fixture(scope="module")
def folder(scratch):
    path, _ = save_reference(scratch("cli") / "tiny-qwen3", "qwen3", num_hidden_layers=2,
                             hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16)
    return path


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(folder)


@pytest.mark.parametrize("command", [[], ["generate"], ["chat"], ["info"]])
def test_help_teaches_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "qwen3lab " in out


def test_info(folder):
    r = run_cli("info", "--model", str(folder))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^layers\s+2$", r.stdout, re.M), r.stdout
    assert re.search(r"^model type\s+qwen3$", r.stdout, re.M), r.stdout
    assert re.search(r"^thinking\s+yes$", r.stdout, re.M), r.stdout
    assert "embedded default" not in r.stderr


def test_generate_equals_api(folder, llm):
    prompt = "The quick brown fox"
    expected = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0))[0].text
    r = run_cli("generate", prompt, "--model", str(folder), *GREEDY)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


def test_generate_chat_json(folder, llm):
    prompts = ["Hello there", "What is 2+2?"]
    r = run_cli("generate", "--chat", "--json", *prompts, "--model", str(folder), *GREEDY)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [x["prompt"] for x in results] == prompts
    for prompt, result in zip(prompts, results):
        expected = llm.chat([{"role": "user", "content": prompt}],
                            sampling=SamplingParams(max_tokens=8, temperature=0.0))
        (out,) = result["outputs"]
        assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
        assert out["content"] == expected.content and out["reasoning_content"] == expected.reasoning_content
        assert result["prompt_tokens"] == len(expected.prompt_token_ids)


def test_chat_repl_piped(folder, llm):
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    first = llm.chat([{"role": "user", "content": "hello"}], sampling=greedy)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first.content or ""}]
    second = llm.chat(history + [{"role": "user", "content": "hi again"}], enable_thinking=False, sampling=greedy)
    expected = io.StringIO()
    for reply in (first, second):
        print_parsed(reply_parsed(reply), expected)

    r = run_cli("chat", "--model", str(folder), *GREEDY, stdin="hello\n/no_think\nhi again\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected.getvalue()  # two replies, the first with thinking on, the second off
    assert "thinking off" in r.stderr and "Traceback" not in r.stderr


def reply_parsed(reply):
    from qwen3lab.chat import ParsedOutput

    return ParsedOutput(reply.content, reply.reasoning_content, reply.tool_calls)


def test_bad_sampling_value_is_a_clean_error(folder):
    r = run_cli("generate", "hi", "--model", str(folder), "--temperature", "-1")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "temperature" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_model_is_a_clean_error(tmp_path):
    missing = tmp_path / "no-such-model"
    r = run_cli("info", "--model", str(missing))
    assert r.returncode == 2
    assert "error: " in r.stderr and str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_default_model_knows_paris():
    from qwen3lab.weights.default_model import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(f"the SmolLM2 GGUF cannot be fetched here: {e}")
    r = run_cli("generate", "--chat", "What is the capital of France?", "--temperature", "0", "--max-tokens", "24")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "embedded default SmolLM2-135M-Instruct" in r.stderr and "Qwen/Qwen3-4B" in r.stderr
