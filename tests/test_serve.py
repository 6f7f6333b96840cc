"""The HTTP server end to end: a real uvicorn server on 127.0.0.1, driven by the official openai client.

The model is a random-weight Qwen3 (2 layers, width 64) with the real tokenizer and chat template,
so text is gibberish but every path is real: templates, thinking, constrained tool calls and JSON,
streaming, prefix caching, cancellation. Greedy output through the server is checked against
``LLM.generate``; the real SmolLM2 GGUF answers one question at the end.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from serve_fixtures import (  # noqa: F401 - fixtures are found by name
    KEY, NO_THINK, TIME, WEATHER, ServerThread, chat, client, folder, needs_structured, raw, reference, server, wait_idle,
)

from qwen3lab import LLM, SamplingParams
from qwen3lab.chat.parser import parse_output
from qwen3lab.serve import ServerConfig, build_app


# -- chat ----------------------------------------------------------------------------------
def test_chat_thinking_off_has_no_reasoning(client):
    r = chat(client, max_tokens=8, temperature=0, extra_body=NO_THINK)
    msg = r.choices[0].message
    assert r.model == "tiny" and r.object == "chat.completion"
    assert isinstance(msg.content, str) and msg.content
    assert msg.reasoning_content is None
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_thinking_on_goes_to_reasoning(client):
    # The random model never closes </think>, so everything it says is (cut-off) reasoning.
    r = chat(client, max_tokens=8, temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    msg = r.choices[0].message
    assert msg.reasoning_content and not msg.content


@pytest.mark.parametrize("budget", [0, 24, 40])
def test_thinking_budget_closes_the_thought_then_answers(client, budget):
    """The random model never ends its thought: with a budget of N tokens the engine closes it (the
    early-stopping phrase when it fits, then </think>) within N tokens, and an answer follows; streamed
    and whole agree; usage counts the reasoning tokens."""
    kw = dict(max_tokens=60, temperature=0, extra_body={"thinking_budget": budget, "ignore_eos": True})
    r = chat(client, "Why is the sky blue?", **kw)
    msg, use = r.choices[0].message, r.usage
    assert use.completion_tokens_details.reasoning_tokens <= budget or budget == 0
    assert use.completion_tokens_details.reasoning_tokens <= max(budget, 4)  # 0: just "</think>" and the blank line
    assert msg.content and r.choices[0].finish_reason == "length"
    if budget >= 40:
        assert msg.reasoning_content.endswith("based on the thinking directly now.")
    stream = chat(client, "Why is the sky blue?", stream=True, stream_options={"include_usage": True}, **kw)
    reasoning, content, usage = "", "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
    assert (reasoning or None, content) == (msg.reasoning_content, msg.content)
    assert usage.completion_tokens_details.reasoning_tokens == use.completion_tokens_details.reasoning_tokens
    # reasoning_effort maps onto the budget; thinking off has no thought to close.
    low = chat(client, "Why?", max_tokens=8, temperature=0, extra_body={"reasoning_effort": "minimal"})
    assert low.usage.completion_tokens_details.reasoning_tokens <= 4
    off = chat(client, "Why?", max_tokens=8, temperature=0, extra_body={"thinking_budget": 0, **NO_THINK})
    assert off.usage.completion_tokens_details.reasoning_tokens == 0 and off.choices[0].message.content


def test_greedy_matches_llm_generate(client, server, reference):
    prompt = "The capital of France is"
    want = reference.generate(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert got.choices[0].text == want.text
    # Chat: the server's content is the parsed greedy generation of the rendered conversation.
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = reference.tokenizer.encode(reference.render_chat(messages, enable_thinking=False), add_special_tokens=False)
    out = reference.generate(ids, SamplingParams(max_tokens=10, temperature=0))[0]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                       extra_body=NO_THINK)
    assert r.choices[0].message.content == (parse_output(out.text, thinking=False).content or "")
    assert r.usage.prompt_tokens == len(ids)


def test_streaming_chat_matches_whole(client):
    kw = dict(max_tokens=12, temperature=0, extra_body=NO_THINK)
    whole = chat(client, "Tell me a story", **kw).choices[0].message.content
    stream = chat(client, "Tell me a story", stream=True, stream_options={"include_usage": True}, **kw)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_streaming_reasoning_deltas(client):
    stream = chat(client, max_tokens=10, temperature=0, stream=True,
                  extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices)
    whole = chat(client, max_tokens=10, temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert reasoning and reasoning == whole.choices[0].message.reasoning_content


def test_n_seed_and_logprobs(client):
    r = chat(client, n=3, max_tokens=6, temperature=1.0, seed=7, logprobs=True, top_logprobs=2, extra_body=NO_THINK)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1  # different samples
    again = chat(client, n=3, max_tokens=6, temperature=1.0, seed=7, extra_body=NO_THINK)
    assert [c.message.content for c in again.choices] == texts  # the seed makes them reproducible
    for c in r.choices:
        lps = c.logprobs.content
        assert len(lps) == 6
        for t in lps:
            assert t.logprob <= 0 and len(t.top_logprobs) == 2
            assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= -9999


def test_sampling_fields_are_accepted(client):
    r = chat(client, max_tokens=5, temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.3,
             max_completion_tokens=4, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, **NO_THINK})
    assert r.usage.completion_tokens == 4  # max_completion_tokens wins over max_tokens
    # A stop string cuts the text and ends with finish_reason "stop".
    probe = chat(client, max_tokens=8, temperature=0, extra_body=NO_THINK).choices[0].message.content
    stop = probe.strip()[1:3]
    r = chat(client, max_tokens=8, temperature=0, stop=[stop], extra_body=NO_THINK)
    assert r.choices[0].finish_reason == "stop" and stop not in (r.choices[0].message.content or "")


# -- tools and structured output --------------------------------------------------------------
@needs_structured
def test_tool_loop_required_then_answer(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=60, temperature=0, extra_body=NO_THINK)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and all(c.function.name in ("get_weather", "get_time") for c in calls)
    call = calls[0]
    args = json.loads(call.function.arguments)
    assert set(args) == ({"city"} if call.function.name == "get_weather" else {"zone"})
    # Second turn: the tool result goes back, the model answers (no tool forced).
    messages += [{"role": "assistant", "content": None,
                  "tool_calls": [c.model_dump(exclude_none=True) for c in calls]}]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temp_c": 21})} for c in calls]
    final = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                           max_tokens=8, temperature=0, extra_body=NO_THINK)
    assert final.choices[0].finish_reason == "length"
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


@needs_structured
def test_named_tool_choice_streams_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Time in Tokyo?"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=60, temperature=0,
        stream=True, extra_body=NO_THINK)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": "", "fragments": []})
                entry["id"] = tc.id or entry["id"]
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
                if tc.function and tc.function.arguments:
                    entry["fragments"].append(tc.function.arguments)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and calls
    for entry in calls.values():
        assert entry["id"].startswith("call_") and entry["name"] == "get_time"
        assert set(json.loads(entry["arguments"])) == {"zone"}
        # The arguments came as they were generated: several fragments, the first long before the end.
        assert len(entry["fragments"]) > 3 and entry["fragments"][0].startswith("{")
    whole = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Time in Tokyo?"}], tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=60, temperature=0,
        extra_body=NO_THINK)
    assert whole.choices[0].message.tool_calls[0].function.arguments == calls[0]["arguments"]


@needs_structured
def test_forced_tool_call_cut_off_by_max_tokens_is_still_a_tool_call(client):
    """As vLLM: the partial call goes to tool_calls with the arguments written so far, finish_reason length."""
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Time in Tokyo?"}], tools=[WEATHER, TIME],
              tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0, extra_body=NO_THINK)
    for max_tokens in (14, 20):  # cut before the arguments begin, and inside them
        r = client.chat.completions.create(**kw, max_tokens=max_tokens)
        choice = r.choices[0]
        assert choice.finish_reason == "length" and choice.message.content in (None, "")
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_time"
        assert call.function.arguments.startswith("{") if max_tokens == 20 else call.function.arguments == ""
        streamed = ""
        for chunk in client.chat.completions.create(**kw, max_tokens=max_tokens, stream=True):
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    streamed += (tc.function.arguments or "") if tc.function else ""
        assert streamed == call.function.arguments


def test_tool_call_text_is_parsed_when_not_forced():
    # Unforced, the random model never writes a call; the server splits text with this parser
    # (calls taken out of content and out of reasoning alike), so check it on model-like text.
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    parsed = parse_output("Let me check." + text, thinking=False)
    assert parsed.content == "Let me check." and parsed.tool_calls[0]["function"]["name"] == "get_weather"
    parsed = parse_output("hmm " + text + " done</think>Answer", thinking=True)
    assert parsed.tool_calls and parsed.reasoning_content == "hmm  done" and parsed.content == "Answer"


@needs_structured
def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = chat(client, "Describe a person as JSON.", max_tokens=80, temperature=0, extra_body=NO_THINK,
             response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and len(value["name"]) <= 10
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 150
    r = chat(client, "Any JSON object.", max_tokens=80, temperature=0, extra_body=NO_THINK,
             response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


# -- completions ------------------------------------------------------------------------------
def test_completions_tokens_n_logprobs_and_stream(client, reference):
    ids = reference.tokenizer.encode("Once upon a time")
    a = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    b = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.usage.prompt_tokens == len(ids)
    r = client.completions.create(model="tiny", prompt=["one", "two"], n=2, max_tokens=4, temperature=1.0,
                                  seed=3, logprobs=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        assert len(c.logprobs.tokens) == 4 and len(c.logprobs.token_logprobs) == 4
        assert all(len(t) == 3 for t in c.logprobs.top_logprobs)
    stream = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == b.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_cached_tokens_on_repeated_long_prompt(client):
    long = "Here is a long preamble about many things. " * 30
    first = chat(client, long, max_tokens=2, temperature=0, extra_body=NO_THINK)
    second = chat(client, long, max_tokens=2, temperature=0, extra_body=NO_THINK)
    assert first.usage.prompt_tokens > 200
    assert second.usage.prompt_tokens_details.cached_tokens >= 192  # whole 16-token blocks


# -- errors -----------------------------------------------------------------------------------
def test_errors_in_openai_shape(client, server):
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad_key.models.list()
    assert e.value.status_code == 401
    status, body = raw(server, "GET", "/v1/models", key=None)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, temperature=500)
    assert e.value.body["param"] == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[9707] * 2100, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    # Above --max-tokens-limit (1500) a request is capped, as users of vLLM's limits expect, not refused.
    assert chat(client, max_tokens=1600).usage.completion_tokens <= 1500
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "missing"}})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "hi"}])


def test_bad_input_never_takes_the_server_down(server):
    cases = [b"{not json", b"[]", b'{"messages": "hi"}', b'{"messages": []}',
             b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
             b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", '
             b'"json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}',
             b'{"messages": [{"role": "user", "content": "x"}], "n": 0}']
    for body in cases:
        status, out = raw(server, "POST", "/v1/chat/completions", body)
        assert status == 400, (body, out)
        err = json.loads(out)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    # Too large a body is refused from its Content-Length, before it is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{")
        reply = b""
        while b"}}" not in reply and (part := sock.recv(65536)):
            reply += part
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "limit" in reply
    # Without a Content-Length (chunked), the body is counted as it arrives.
    def chunks():
        for _ in range(20):
            yield b"a" * 2**17
    req = urllib.request.Request(server.url + "/v1/completions", data=chunks(), method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"})
    with pytest.raises((urllib.error.HTTPError, urllib.error.URLError, ConnectionError)) as e:
        urllib.request.urlopen(req, timeout=30)
    if isinstance(e.value, urllib.error.HTTPError):
        assert e.value.code == 413
    status, out = raw(server, "GET", "/nowhere")
    assert status == 404 and json.loads(out)["error"]["type"] == "not_found_error"
    assert raw(server, "GET", "/health") == (200, b"ok")


def test_n_is_bounded_and_lone_surrogates_are_400(client, server):
    """A request may start at most --max-n sequences (n times its prompts); text holding a lone UTF-16
    surrogate (valid JSON, not Unicode) is refused naming the field; the server keeps serving."""
    with pytest.raises(openai.BadRequestError, match="n=20000 is more than this server's limit of 16") as e:
        chat(client, n=20000, max_tokens=1)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match=r"n=6 for each of 3 prompts \(18 sequences\)"):
        client.completions.create(model="tiny", prompt=["a", "b", "c"], n=6, max_tokens=1)
    assert len(chat(client, n=16, max_tokens=1, extra_body=NO_THINK).choices) == 16
    for body in (b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
                 b'{"model": "tiny", "prompt": ["ok", "\\udc00"], "max_tokens": 1}'):
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        status, out = raw(server, "POST", path, body)
        error = json.loads(out)["error"]
        assert status == 400 and "lone UTF-16 surrogate" in error["message"], out
        assert error["param"] in ("messages.0.content", "prompt.1")
    # A surrogate pair written as escapes is one valid character.
    status, out = raw(server, "POST", "/v1/completions", b'{"model": "tiny", "prompt": "\\ud83d\\ude00", "max_tokens": 1}')
    assert status == 200, out
    status, out = raw(server, "POST", "/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe", "max_tokens": 1}')
    assert status == 400, out
    for kwargs, bad in (({"tokenize": True}, "'tokenize'"), ({"bos_token": "<x>"}, "'bos_token'"),
                        ({"add_generation_prompt": False, "eos_token": ""}, "'add_generation_prompt', 'eos_token'")):
        with pytest.raises(openai.BadRequestError, match=f"chat_template_kwargs may not set {bad}"):
            chat(client, max_tokens=1, extra_body={"chat_template_kwargs": kwargs})
    assert wait_idle(server.engine)


def test_a_huge_prompt_is_refused_before_it_is_tokenised(client, server, monkeypatch):
    """A prompt far past the context is refused from its first characters: the whole text never goes
    through the tokenizer (the engine's own length check would come after tokenising all of it)."""
    tokenizer, seen = server.llm.tokenizer, []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, *a, **k: seen.append(len(text)) or encode(text, *a, **k))
    text = "lorem ipsum dolor sit amet " * 35000  # 945,000 characters, under the 1 MiB body limit
    with pytest.raises(openai.BadRequestError, match="more than 2048 tokens") as e:
        client.completions.create(model="tiny", prompt=text, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="messages has more than 2048 tokens"):
        chat(client, content=text, max_tokens=1)
    assert seen and max(seen) <= 8 * 2048
    assert len(chat(client, content="short", max_tokens=1, extra_body=NO_THINK).choices) == 1


def test_openapi_schema_and_docs_are_served(server):
    status, out = raw(server, "GET", "/openapi.json", key=None)
    schema = json.loads(out)
    assert status == 200 and "/v1/chat/completions" in schema["paths"]
    post = schema["paths"]["/v1/chat/completions"]["post"]
    assert "422" not in post["responses"] and post["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert "HTTPValidationError" not in json.dumps(schema)
    status, page = raw(server, "GET", "/docs", key=None)
    assert status == 200 and b"swagger" in page.lower()


def test_protect_metrics_asks_for_the_key(folder):
    llm = LLM(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_gb=0.05)
    config = ServerConfig(served_model_names=["tiny"], api_key=KEY, protect_metrics=True)
    with ServerThread(build_app(llm, config)) as s:
        assert raw(s, "GET", "/metrics", key=None)[0] == 401
        status, body = raw(s, "GET", "/metrics")
        assert status == 200 and b"qwen3lab:num_requests_waiting" in body
        assert raw(s, "GET", "/health", key=None)[0] == 200


def test_overloaded_server_answers_503(folder):
    llm = LLM(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_gb=0.05, max_num_seqs=1)
    with ServerThread(build_app(llm, ServerConfig(served_model_names=["tiny"], max_waiting=1))) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        results = []

        def go():
            try:
                c.completions.create(model="tiny", prompt="hi", max_tokens=80, extra_body={"ignore_eos": True})
                results.append(200)
            except openai.APIStatusError as e:
                results.append(e.status_code)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join(60)
        assert 503 in results and 200 in results


# -- metrics, health, page ----------------------------------------------------------------------
def test_metrics_health_models_and_page(client, server):
    chat(client, max_tokens=3, extra_body=NO_THINK)
    assert [m.id for m in client.models.list()] == ["tiny"]
    status, body = raw(server, "GET", "/metrics", key=None)
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) qwen3lab:\w+ .+", line), line
            continue
        m = re.fullmatch(r'(qwen3lab:\w+)\{([^}]*)\} (\S+)', line)
        assert m, line
        samples.setdefault(m.group(1), []).append((m.group(2), float(m.group(3))))
    for name in ("num_requests_waiting", "num_requests_running", "kv_cache_usage_perc", "prefix_cache_hit_rate",
                 "generation_tokens_total", "prompt_tokens_total", "time_to_first_token_seconds_bucket",
                 "inter_token_latency_seconds_bucket", "time_to_first_token_seconds_count"):
        assert f"qwen3lab:{name}" in samples, name
    assert samples["qwen3lab:generation_tokens_total"][0][1] > 0
    assert samples["qwen3lab:time_to_first_token_seconds_count"][0][1] > 0
    assert 0 <= samples["qwen3lab:kv_cache_usage_perc"][0][1] <= 1
    assert raw(server, "GET", "/health", key=None) == (200, b"ok")
    status, page = raw(server, "GET", "/", key=None)
    html = page.decode()
    assert status == 200 and "/v1/chat/completions" in html and "<details" in html and "AbortController" in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", html)  # no CDN: works offline


# -- the real model ----------------------------------------------------------------------------------
def test_smollm2_knows_the_capital_of_france():
    from qwen3lab.weights.default_model import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except Exception as e:  # noqa: BLE001 - offline and not cached
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
    llm = LLM(str(path), max_model_len=512, kv_cache_memory_gb=0.1)
    with ServerThread(build_app(llm, ServerConfig(served_model_names=["smollm2"]))) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model="smollm2", temperature=0, max_tokens=32,
                                      messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content


def test_cli_has_serve_command(capsys):
    from qwen3lab.cli.main import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--api-key" in out and "--served-model-name" in out and "--max-model-len" in out

