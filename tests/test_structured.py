"""Structured output: JSON schemas and forced tool calls as token masks (``qwen3lab.structured``).

A random-weight Qwen3 writes garbage, so every sampled answer that parses and validates is the
grammar's doing. The constraint objects are also driven by hand (thinking gate, padded ids, end
tokens), and the real SmolLM2 answers a JSON-schema question about Paris.
"""

import json

import pytest

from checkpoints import qwen_tokenizer_dir, save_reference

jsonschema = pytest.importorskip("jsonschema")

from qwen3lab import LLM, SamplingParams  # noqa: E402
from qwen3lab.chat import parse_output  # noqa: E402
from qwen3lab.structured import (  # noqa: E402
    constraint_for_request,
    json_constraint_factory,
    tool_call_constraint_factory,
)
from qwen3lab.tokenizer import Tokenizer  # noqa: E402

MODEL_VOCAB = 151936  # Qwen3 pads its embedding past the tokenizer's 151669 ids
THINK_END = 151668

SCHEMAS = {
    "nested": {  # objects in objects and in arrays, enums, integers and numbers, required and optional
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "kind": {"enum": ["home", "work"]},
            "address": {"type": "object",
                        "properties": {"zip": {"type": "integer", "minimum": 0, "maximum": 99999},
                                       "city": {"type": "string", "maxLength": 5},
                                       "lat": {"type": "number", "minimum": -90, "maximum": 90}},
                        "required": ["zip", "city", "lat"], "additionalProperties": False},
            "phones": {"type": "array", "minItems": 1, "maxItems": 2,
                       "items": {"type": "object",
                                 "properties": {"label": {"enum": ["mobile", "fixed"]},
                                                "digits": {"type": "string", "maxLength": 4}},
                                 "required": ["label"], "additionalProperties": False}},
        },
        "required": ["name", "kind", "address", "phones"], "additionalProperties": False,
    },
    "arrays_enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 4},
            "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
        },
        "required": ["color", "tags", "flags"], "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {
            "x": {"type": "number"},
            "n": {"type": "integer", "minimum": -5, "maximum": 5},
            "ok": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 4},
        },
        "required": ["x", "n"], "additionalProperties": False,
    },
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 8},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object",
                   "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                  "b": {"type": "integer", "minimum": 0, "maximum": 999}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def llm(scratch):
    folder = scratch("qwen3-structured")
    save_reference(folder, "qwen3", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return LLM(folder, dtype="float32", max_model_len=512, kv_cache_memory_gb=0.05)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(qwen_tokenizer_dir())


def _prompt(llm, text, thinking=False, tools=None):
    rendered = llm.render_chat([{"role": "user", "content": text}], tools=tools, enable_thinking=thinking)
    return llm.tokenizer.encode(rendered, add_special_tokens=False)


def _allowed(mask):
    return set(mask.nonzero().flatten().tolist())


# -- sampled answers from the random model ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampled_json_always_validates(llm, name):
    schema = SCHEMAS[name]
    factory = json_constraint_factory(llm.tokenizer, schema, thinking=False)
    prompts = [_prompt(llm, "Give me JSON."), _prompt(llm, "Another one, please.")]
    outs = llm.generate(prompts, SamplingParams(n=3, temperature=1.0, top_p=1.0, top_k=0, seed=7, max_tokens=200),
                        constraint_factory=factory)
    for out in outs:
        for c in out.outputs:
            assert c.finish_reason == "stop", (c.text, c.finish_reason)
            assert c.token_ids[-1] == llm.tokenizer.eos_token_id
            assert max(c.token_ids) < llm.tokenizer.vocab_size  # padded ids never sampled
            jsonschema.validate(json.loads(c.text), schema)


def test_fifty_sampled_nested_answers_validate(llm):
    schema = SCHEMAS["nested"]
    factory = json_constraint_factory(llm.tokenizer, schema, thinking=False)
    prompts = [_prompt(llm, f"Contact card number {i} as JSON.") for i in range(10)]
    params = [SamplingParams(n=5, temperature=1.0, top_p=1.0, top_k=0, seed=100 * i, max_tokens=200)
              for i in range(10)]  # seeds 100i + j: all 50 samples draw differently
    outs = llm.generate(prompts, params, constraint_factory=factory)
    answers = [c for out in outs for c in out.outputs]
    assert len(answers) == 50
    for c in answers:
        assert c.finish_reason == "stop", (c.text, c.finish_reason)
        jsonschema.validate(json.loads(c.text), schema)
    assert len({c.text for c in answers}) >= 45  # sampled, not one answer repeated


def test_chat_response_format_json_schema(llm):
    schema = SCHEMAS["arrays_enums"]
    for seed in (1, 2):
        res = llm.chat([{"role": "user", "content": "Colors?"}], enable_thinking=False,
                       sampling=SamplingParams(temperature=1.0, seed=seed, max_tokens=100),
                       response_format={"type": "json_schema",
                                        "json_schema": {"name": "colors", "schema": schema, "strict": True}})
        assert res.finish_reason == "stop"
        jsonschema.validate(json.loads(res.content), schema)


def test_tool_choice_required_gives_valid_calls(llm):
    prompt = _prompt(llm, "What is the weather in Paris, and 2+3?", tools=TOOLS)
    factory = tool_call_constraint_factory(llm.tokenizer, TOOLS, function_name=None, thinking=False)
    out = llm.generate(prompt, SamplingParams(n=4, temperature=1.0, top_p=1.0, top_k=0, seed=3, max_tokens=200),
                       constraint_factory=factory)[0]
    for c in out.outputs:
        assert c.finish_reason == "stop", c.text
        parsed = parse_output(c.text, thinking=False)
        assert parsed.tool_calls and not parsed.parse_errors, c.text
        assert parsed.content is None
        for call in parsed.tool_calls:
            fn = call["function"]
            jsonschema.validate(json.loads(fn["arguments"]), PARAMS[fn["name"]])


def test_named_tool_choice_through_chat(llm):
    for seed in (5, 6):
        res = llm.chat([{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS, enable_thinking=False,
                       sampling=SamplingParams(temperature=1.0, seed=seed, max_tokens=200),
                       tool_choice={"type": "function", "function": {"name": "add"}})
        assert res.finish_reason == "stop" and res.tool_calls, res.text
        for call in res.tool_calls:
            assert call["function"]["name"] == "add"
            jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS["add"])


class _ForceThoughts:
    """Test wrapper: writes `steps` free reasoning tokens, then `</think>`, then defers to `inner`."""

    def __init__(self, inner, steps):
        self.inner, self.steps, self.seen = inner, steps, 0

    def allowed_tokens(self, vocab_size):
        inner = self.inner.allowed_tokens(vocab_size)
        if inner is not None:
            return inner
        import torch

        mask = torch.zeros(vocab_size, dtype=torch.bool)
        if self.seen < self.steps:
            mask[:1000] = True  # ordinary text tokens
        else:
            mask[THINK_END] = True
        return mask

    def advance(self, token_id):
        self.seen += 1
        self.inner.advance(token_id)


def test_thinking_then_json_end_to_end(llm):
    schema = SCHEMAS["numbers"]
    inner = json_constraint_factory(llm.tokenizer, schema, thinking=True)
    out = llm.generate(_prompt(llm, "Think, then answer.", thinking=True),
                       SamplingParams(n=2, temperature=1.0, seed=11, max_tokens=120),
                       constraint_factory=lambda: _ForceThoughts(inner(), steps=5))[0]
    for c in out.outputs:
        assert c.finish_reason == "stop", c.text
        assert c.token_ids[5] == THINK_END
        parsed = parse_output(c.text, thinking=True)
        assert parsed.reasoning_content  # the free part came first
        jsonschema.validate(json.loads(parsed.content), schema)


# -- the constraint object driven by hand ----------------------------------------------------------

def _feed(constraint, tok, text):
    for t in tok.encode(text, add_special_tokens=False):
        mask = constraint.allowed_tokens(MODEL_VOCAB)
        assert mask is None or bool(mask[t]), (text, t, tok.decode([t]))
        constraint.advance(t)


def test_thinking_gate(tok):
    c = json_constraint_factory(tok, {"type": "object"}, thinking=True)()
    assert c.allowed_tokens(MODEL_VOCAB) is None
    _feed(c, tok, "<think>\nI could answer [1, 2] but an object it is.")
    assert c.allowed_tokens(MODEL_VOCAB) is None  # reasoning is free
    c.advance(THINK_END)
    mask = c.allowed_tokens(MODEL_VOCAB)
    assert mask is not None and mask.shape == (MODEL_VOCAB,)
    assert mask[tok.encode("{")[0]] and not mask[tok.encode("[")[0]] and not mask[THINK_END]
    _feed(c, tok, '\n\n{"a": [1, {"b": null}], "c": "d"}')
    mask = c.allowed_tokens(MODEL_VOCAB)
    assert mask[tok.eos_token_id] and not mask[tok.encode("x")[0]]
    assert _allowed(mask) - {tok.eos_token_id} <= {t for t in _allowed(mask) if not tok.decode([t]).strip()}
    c.advance(tok.eos_token_id)
    assert _allowed(c.allowed_tokens(MODEL_VOCAB)) == {tok.eos_token_id}


def test_without_think_token_thinking_is_off(tok):
    class NoThink(Tokenizer):
        def token_to_id(self, token):
            return None if token == "</think>" else super().token_to_id(token)

    c = json_constraint_factory(NoThink.from_dir(qwen_tokenizer_dir()), None, thinking=True)()
    assert c.allowed_tokens(MODEL_VOCAB) is not None  # constrained from the first token


def test_padded_vocabulary_is_masked(tok):
    n = tok.vocab_size
    c = json_constraint_factory(tok, {"type": "string"}, thinking=False)()
    for text in ("", '"abc'):
        _feed(c, tok, text)
        mask = c.allowed_tokens(MODEL_VOCAB)
        assert mask.any() and not mask[n:].any()
    _feed(c, tok, '"')
    c.advance(tok.eos_token_id)
    assert not c.allowed_tokens(MODEL_VOCAB)[n:].any()


def test_json_object_only_objects(tok):
    c = json_constraint_factory(tok, None, thinking=False)()
    mask = c.allowed_tokens(MODEL_VOCAB)
    for bad in ("[", '"', "1", "null"):
        assert not mask[tok.encode(bad)[0]], bad
    _feed(c, tok, '{"k": {"deep": [true, 1.5e3, "x"]}}')
    assert c.allowed_tokens(MODEL_VOCAB)[tok.eos_token_id]


def test_tool_call_mask_forces_the_named_function(tok):
    c = tool_call_constraint_factory(tok, TOOLS, function_name="get_weather", thinking=False)()
    _feed(c, tok, '<tool_call>\n{"name": "')
    mask = c.allowed_tokens(MODEL_VOCAB)
    assert mask[tok.encode("get")[0]] and not mask[tok.encode("add")[0]]
    _feed(c, tok, 'get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>')
    assert c.allowed_tokens(MODEL_VOCAB)[tok.eos_token_id]
    _feed(c, tok, '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}\n'
                  "</tool_call>")
    assert c.allowed_tokens(MODEL_VOCAB)[tok.eos_token_id]


def test_rejected_token_steers_to_the_end(tok):
    c = json_constraint_factory(tok, None, thinking=False)()
    c.advance(tok.encode("[")[0])  # only possible if the mask was bypassed
    assert c.error and _allowed(c.allowed_tokens(MODEL_VOCAB)) == {tok.eos_token_id}


# -- errors and the OpenAI shapes ------------------------------------------------------------------

@pytest.mark.parametrize("schema, words", [
    ({"type": "strin"}, "strin"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "shoe-size"}}}, "shoe-size"),
    ({"oneOf": 3}, "oneOf"),
    ("not a dict", "dict"),
])
def test_invalid_schema_is_a_clear_error(tok, schema, words):
    with pytest.raises(ValueError, match="JSON schema") as e:
        json_constraint_factory(tok, schema, thinking=False)
    assert words in str(e.value)


def test_lenient_schema_when_not_strict(tok):
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "shoe-size"}}}
    assert json_constraint_factory(tok, schema, thinking=False, strict=False)() is not None


def test_tool_errors(tok):
    with pytest.raises(ValueError, match="'mul'.*add, get_weather"):
        tool_call_constraint_factory(tok, TOOLS, function_name="mul", thinking=False)
    with pytest.raises(ValueError, match="no tools"):
        tool_call_constraint_factory(tok, [], function_name=None, thinking=False)
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}
    with pytest.raises(ValueError, match="tool 'f'.*strin"):
        tool_call_constraint_factory(tok, [bad], function_name=None, thinking=False)


def test_openai_shapes(tok):
    assert constraint_for_request(tok, thinking=False) is None
    assert constraint_for_request(tok, response_format={"type": "text"}, tools=TOOLS, tool_choice="auto",
                                  thinking=False) is None
    assert constraint_for_request(tok, tools=TOOLS, tool_choice="none", thinking=False) is None
    assert constraint_for_request(tok, response_format={"type": "json_object"}, thinking=False) is not None
    assert constraint_for_request(tok, tools=TOOLS, tool_choice="required", thinking=False) is not None
    with pytest.raises(ValueError, match="response_format type 'xml'"):
        constraint_for_request(tok, response_format={"type": "xml"}, thinking=False)
    with pytest.raises(ValueError, match="json_schema"):
        constraint_for_request(tok, response_format={"type": "json_schema"}, thinking=False)
    with pytest.raises(ValueError, match="needs tools"):
        constraint_for_request(tok, tool_choice="required", thinking=False)
    with pytest.raises(ValueError, match="tool_choice 'sometimes'"):
        constraint_for_request(tok, tools=TOOLS, tool_choice="sometimes", thinking=False)
    with pytest.raises(ValueError, match="cannot also follow response_format"):
        constraint_for_request(tok, response_format={"type": "json_object"}, tools=TOOLS, tool_choice="required",
                               thinking=False)


# -- a real model -----------------------------------------------------------------------------------

def test_smollm2_answers_paris_in_json():
    from qwen3lab.weights import default_model

    try:
        path = default_model.smollm2_gguf_path()
    except (RuntimeError, ValueError, OSError) as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
    llm = LLM(path, max_model_len=512, kv_cache_memory_gb=0.05)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    res = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in JSON with the city "
                                                "and its country."}],
                   sampling=SamplingParams(temperature=0.0, max_tokens=60),
                   response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}})
    assert res.finish_reason == "stop", res.text
    answer = json.loads(res.content)
    jsonschema.validate(answer, schema)
    assert "Paris" in answer["city"], answer
