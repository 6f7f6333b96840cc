"""Prompt scoring: per-token prompt log-probabilities from the engine (a prefill that keeps its logits),
the legacy completions ``echo`` + ``logprobs`` shape the harnesses read, and vLLM's tokenizer endpoints."""

from __future__ import annotations

import json

import pytest
import torch
from serve_fixtures import KEY, client, folder, raw, server  # noqa: F401 - fixtures

from qwen3lab import LLM, SamplingParams

PROMPT = list(range(1000, 1037))  # 37 tokens: several chunks of 16, a partial block at the end


@pytest.fixture(scope="module")
def hf_logprobs(folder):  # noqa: F811
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0].float().log_softmax(-1)


@pytest.mark.parametrize("chunk", [16, 512])
def test_prompt_logprobs_equal_transformers(folder, hf_logprobs, chunk):  # noqa: F811
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=chunk, kv_cache_memory_gb=0.05)
    out = llm.generate([PROMPT], SamplingParams(max_tokens=0, prompt_logprobs=3))[0]
    assert out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
    lps = out.prompt_logprobs
    assert len(lps) == len(PROMPT) and lps[0] is None
    for p in range(1, len(PROMPT)):
        ref = hf_logprobs[p - 1]
        assert abs(lps[p][PROMPT[p]] - float(ref[PROMPT[p]])) < 1e-4
        top = ref.topk(3)
        for t, v in zip(top.indices.tolist(), top.values.tolist()):
            assert abs(lps[p][t] - v) < 1e-4
        assert len(lps[p]) <= 4


def test_scoring_after_the_prompt_is_cached_still_scores_every_token(folder, hf_logprobs):  # noqa: F811
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05)
    greedy = SamplingParams(max_tokens=2, temperature=0.0)
    llm.generate([PROMPT], greedy)  # publishes the prompt's full blocks to the prefix cache
    out = llm.generate([PROMPT], SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=0))[0]
    assert len(out.prompt_logprobs) == len(PROMPT)
    worst = max(abs(out.prompt_logprobs[p][PROMPT[p]] - float(hf_logprobs[p - 1, PROMPT[p]]))
                for p in range(1, len(PROMPT)))
    assert worst < 1e-4
    # The generated tokens are those of the plain request: scoring changes nothing downstream.
    assert out.outputs[0].token_ids == llm.generate([PROMPT], greedy)[0].outputs[0].token_ids


def test_echo_with_logprobs_scores_the_prompt(client, hf_logprobs):  # noqa: F811
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(PROMPT) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for p in range(1, len(PROMPT)):
        assert abs(lp.token_logprobs[p] - float(hf_logprobs[p - 1, PROMPT[p]])) < 1e-4
        assert len(lp.top_logprobs[p]) == 1
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 0
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert r.choices[0].text.startswith(lp.tokens[0]) and r.choices[0].text == "".join(lp.tokens)


def test_echo_then_generate(client):  # noqa: F811
    # lm-eval's loglikelihood request: echo, logprobs 1, max_tokens 1; it drops the last (generated) entry.
    r = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=1, echo=True,
                                  logprobs=1, temperature=0)
    c = r.choices[0]
    assert c.text.startswith("The capital of France is") and len(c.text) > len("The capital of France is")
    n_prompt = r.usage.prompt_tokens
    assert len(c.logprobs.tokens) == n_prompt + 1 and c.logprobs.token_logprobs[-1] is not None
    assert c.logprobs.text_offset[n_prompt] == len("The capital of France is")
    plain = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=1, temperature=0)
    assert c.text == "The capital of France is" + plain.choices[0].text


def test_prompt_logprobs_field_and_refusals(server, hf_logprobs):  # noqa: F811
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
    status, data = raw(server, "POST", "/v1/completions", json.dumps(body).encode())
    assert status == 200
    field = json.loads(data)["choices"][0]["prompt_logprobs"]
    assert field[0] is None and len(field) == len(PROMPT)
    assert abs(field[5][str(PROMPT[5])]["logprob"] - float(hf_logprobs[4, PROMPT[5]])) < 1e-4
    status, data = raw(server, "POST", "/v1/completions", json.dumps({**body, "stream": True}).encode())
    assert status == 400 and "stream" in json.loads(data)["error"]["message"]
    status, data = raw(server, "POST", "/v1/completions",
                       json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 0}).encode())
    assert status == 400 and json.loads(data)["error"]["param"] == "max_tokens"


def test_max_tokens_above_the_limit_is_capped(client):  # noqa: F811
    r = client.completions.create(model="tiny", prompt="Hi", max_tokens=100000, temperature=0, extra_body={
        "ignore_eos": True, "min_tokens": 0})
    assert r.usage.completion_tokens <= 1500 and r.choices[0].finish_reason == "length"


def test_tokenizer_endpoints(server):  # noqa: F811
    tok = server.llm.tokenizer
    status, data = raw(server, "POST", "/tokenize", json.dumps({"prompt": "Hello world", "add_special_tokens": False}
                                                                 ).encode(), key=None)
    out = json.loads(data)
    assert status == 200 and out["tokens"] == tok.encode("Hello world", add_special_tokens=False)
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == server.engine.max_model_len
    msgs = [{"role": "user", "content": "Hi"}]
    status, data = raw(server, "POST", "/tokenize", json.dumps({"model": "tiny", "messages": msgs}).encode())
    want = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True), add_special_tokens=False)
    assert status == 200 and json.loads(data)["tokens"] == want
    status, data = raw(server, "POST", "/detokenize", json.dumps({"tokens": out["tokens"]}).encode())
    assert status == 200 and json.loads(data)["prompt"] == "Hello world"
    status, data = raw(server, "POST", "/detokenize", json.dumps({"tokens": [10**9]}).encode())
    assert status == 400 and json.loads(data)["error"]["param"] == "tokens"
    status, data = raw(server, "GET", "/tokenizer_info")
    info = json.loads(data)
    assert status == 200 and info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    status, data = raw(server, "GET", "/version")
    assert status == 200 and json.loads(data)["version"]
    status, data = raw(server, "GET", "/v1/models/tiny")
    assert status == 200 and json.loads(data)["id"] == "tiny"
    status, data = raw(server, "GET", "/v1/models/other/name")
    assert status == 404


def test_served_names_default_to_the_model_value_and_take_aliases():
    import argparse
    from pathlib import Path

    from qwen3lab.cli.serve import add_parser, served_names

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "/models/q3", "--served-model-name", "a/b", "c"])
    assert args.served_model_name == ["a/b", "c"]
    assert served_names(args.served_model_name, args.model, Path("/models/q3")) == ["a/b", "c"]
    assert served_names(None, "Qwen/Qwen3-4B", Path("/cache/x")) == ["Qwen/Qwen3-4B"]
    assert served_names(None, None, Path("/cache/smollm2.gguf")) == ["smollm2"]
