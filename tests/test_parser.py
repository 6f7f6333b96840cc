"""Output parser: reasoning / content / tool calls, batch and streaming."""

import json
import random
import re

import pytest

from qwen3lab.chat.parser import ParsedOutput, StreamingOutputParser, parse_output


def calls(out: ParsedOutput):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in out.tool_calls]


def test_thinking_with_both_tags():
    out = parse_output("<think>\nLet me think.\n</think>\n\nThe answer is 4.", thinking=True)
    assert out.reasoning_content == "Let me think."
    assert out.content == "The answer is 4."
    assert out.tool_calls == [] and out.parse_errors == []


def test_thinking_without_opening_tag():
    # Templates that put "<think>\n" in the prompt: the model only writes the closing tag.
    out = parse_output("Reasoning here.\n</think>\n\nAnswer.", thinking=True)
    assert (out.reasoning_content, out.content) == ("Reasoning here.", "Answer.")


def test_thinking_cut_off_is_reasoning():
    out = parse_output("<think>\nStill thinking about", thinking=True)
    assert (out.reasoning_content, out.content) == ("Still thinking about", None)


def test_thinking_empty_block_from_soft_switch():
    out = parse_output("<think>\n\n</think>\n\nQuick answer.", thinking=True)
    assert (out.reasoning_content, out.content) == (None, "Quick answer.")


def test_thinking_off_keeps_everything_in_content():
    assert parse_output("Plain answer.\n", thinking=False) == ParsedOutput(content="Plain answer.")
    out = parse_output("<think>\n\n</think>\n\nThe answer.", thinking=False)
    assert (out.reasoning_content, out.content) == (None, "The answer.")
    # Text inside think tags is kept: the user asked for no reasoning, never lose the answer.
    out = parse_output("<think>\nSome thought\n</think>\n\nThe answer.", thinking=False)
    assert out.reasoning_content is None
    assert out.content == "Some thought\n\n\nThe answer."
    out = parse_output("Only an answer</think>", thinking=False)
    assert out.content == "Only an answer"


def test_empty_output():
    assert parse_output("", thinking=True) == ParsedOutput()
    assert parse_output("  \n", thinking=False) == ParsedOutput()


def test_single_tool_call():
    text = 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
    out = parse_output(text, thinking=False)
    assert out.content == "I will check."
    assert calls(out) == [("get_weather", {"city": "東京"})]
    call = out.tool_calls[0]
    assert re.fullmatch(r"call_[0-9a-f]+", call["id"]) and call["type"] == "function"
    assert call["function"]["arguments"] == '{"city": "東京"}'  # JSON string, not escaped to \\u


def test_multiple_tool_calls_and_unique_ids():
    text = ("<think>\nNeed two lookups.\n</think>\n\n"
            '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>')
    out = parse_output(text, thinking=True)
    assert out.reasoning_content == "Need two lookups."
    assert out.content is None
    assert calls(out) == [("a", {"x": 1}), ("b", {})]
    assert out.tool_calls[0]["id"] != out.tool_calls[1]["id"]


def test_tool_call_inside_reasoning_is_not_lost():
    text = ('<think>\nI should call it.\n<tool_call>\n{"name": "search", "arguments": {"q": "qwen"}}\n'
            "</tool_call>\nDone.\n</think>\n\n")
    out = parse_output(text, thinking=True)
    assert calls(out) == [("search", {"q": "qwen"})]
    assert out.reasoning_content == "I should call it.\n\nDone."
    assert out.content is None
    assert "tool_call" not in out.reasoning_content


def test_tool_call_argument_variants():
    out = parse_output('<tool_call>{"name": "f"}</tool_call>'
                       '<tool_call>{"name": "g", "arguments": "{\\"k\\": [1, 2]}"}</tool_call>', thinking=False)
    assert calls(out) == [("f", {}), ("g", {"k": [1, 2]})]


def test_unclosed_tool_call_at_end():
    out = parse_output('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n', thinking=False)
    assert calls(out) == [("f", {"a": 1})] and out.content is None


@pytest.mark.parametrize("body", ['{"name": "f", "arguments": {"a": 1}', '{"arguments": {}}', "[1, 2]",
                                  '{"name": "f", "arguments": [1]}', "not json at all"])
def test_malformed_tool_call_kept_verbatim(body):
    text = f"Before.\n<tool_call>\n{body}\n</tool_call>\nAfter."
    out = parse_output(text, thinking=False)
    assert out.tool_calls == []
    assert out.content == text  # nothing lost
    assert len(out.parse_errors) == 1 and "tool call" in out.parse_errors[0]


def test_malformed_and_valid_calls_mixed():
    text = ('<tool_call>\n{"name": "ok", "arguments": {}}\n</tool_call>\n'
            "<tool_call>\n{bad}\n</tool_call>")
    out = parse_output(text, thinking=False)
    assert calls(out) == [("ok", {})]
    assert out.content == "<tool_call>\n{bad}\n</tool_call>"
    assert len(out.parse_errors) == 1


def test_partial_tag_is_held_back_in_streaming():
    p = StreamingOutputParser(thinking=False)
    events = p.feed("Hello <too")
    assert [(e.kind, e.text) for e in events] == [("content", "Hello")]
    events = p.feed('l_call>{"name": "f", "arguments": {}}</tool_call>')
    assert [e.kind for e in events] == ["tool_call"]
    p.finish()
    assert p.result().content == "Hello"


def test_streaming_reasoning_then_content_events():
    p = StreamingOutputParser(thinking=True)
    events = []
    for piece in ["<thi", "nk>\nStep 1.", "\nStep 2.\n</th", "ink>\n\nAnswer", " here.\n"]:
        events += p.feed(piece)
    events += p.finish()
    kinds = [e.kind for e in events]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # reasoning first, then content
    assert "".join(e.text for e in events if e.kind == "reasoning") == "Step 1.\nStep 2."
    assert "".join(e.text for e in events if e.kind == "content") == "Answer here."


STREAM_CASES = [
    ("<think>\nLet me think.\n</think>\n\nThe answer is 4.", True),
    ("Reasoning only then </think> answer <think> stray", True),
    ("<think>\nA\n<tool_call>\n{\"name\": \"s\", \"arguments\": {\"q\": \"<think>\"}}\n</tool_call>\nB</think>\n\n"
     "Answer with < and <t and </ characters.\n<tool_call>\n{\"name\": \"t\", \"arguments\": {}}\n</tool_call>", True),
    ("<think>\nThought\n</think>\n\nHi <tool_call>{broken</tool_call> there <tool_call>{\"name\": \"x\"}", False),
    ("  spaced   <tool_call>{\"name\": \"a\", \"arguments\": {\"k\": \"v\"}}</tool_call>  \n  more  ", False),
    ("trailing partial <tool_ca", False),
    ("<think>cut off <tool_call>{\"name\": ", True),
    ("中文回答 😀 <think>\n\n</think> 继续", False),
]


@pytest.mark.parametrize("text,thinking", STREAM_CASES)
def test_streaming_equals_batch_for_random_chunkings(text, thinking):
    expected = parse_output(text, thinking)
    rng = random.Random(1234)
    for _ in range(30):
        p = StreamingOutputParser(thinking)
        events, i = [], 0
        while i < len(text):
            n = rng.randint(1, 8)
            events += p.feed(text[i:i + n])
            i += n
        events += p.finish()
        got = p.result()
        strip_ids = lambda cs: [c["function"] for c in cs]  # noqa: E731 - ids are random
        assert (got.content, got.reasoning_content, got.parse_errors) == (
            expected.content, expected.reasoning_content, expected.parse_errors)
        assert strip_ids(got.tool_calls) == strip_ids(expected.tool_calls)
        # The events alone rebuild the same result.
        assert ("".join(e.text for e in events if e.kind == "content") or None) == expected.content
        assert ("".join(e.text for e in events if e.kind == "reasoning") or None) == expected.reasoning_content
        assert strip_ids([e.tool_call for e in events if e.kind == "tool_call"]) == strip_ids(expected.tool_calls)


def test_feed_after_finish_raises():
    p = StreamingOutputParser(thinking=False)
    p.finish()
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_tool_call_arguments_stream_as_written():
    """The arguments arrive as fragments while the call is generated (after a start event with the name);
    joined, they are the final arguments string, the model's own text."""
    text = ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "days": [1, {"a": "}]"}]}}'
            '\n</tool_call>')
    p = StreamingOutputParser(thinking=False)
    events = [e for ch in text for e in p.feed(ch)] + p.finish()
    kinds = [e.kind for e in events if e.kind != "content"]
    assert kinds[0] == "tool_call_start" and kinds[-1] == "tool_call" and kinds.count("tool_call_args") > 10
    first_args = next(i for i, e in enumerate(events) if e.kind == "tool_call_args")
    assert events[first_args].text == "{" and first_args < len(events) - 10
    args = "".join(e.text for e in events if e.kind == "tool_call_args")
    assert args == '{"city": "東京", "days": [1, {"a": "}]"}]}' == p.result().tool_calls[0]["function"]["arguments"]
    assert events[0].kind == "tool_call_start" or events[0].kind == "content"
    assert p.result().tool_calls[0]["id"] == next(e for e in events if e.kind == "tool_call_start").tool_call["id"]


def test_tool_call_cut_off_keeps_its_partial_arguments():
    out = parse_output('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', thinking=False)
    assert out.content is None and out.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Os'}
    assert "sent with the arguments written" in out.parse_errors[0]
    out = parse_output('<tool_call>\n{"name": "get_weather", "arg', thinking=False)
    assert out.tool_calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    # Without a complete name nothing was started: the fragment stays text, as before.
    out = parse_output('<tool_call>\n{"name": "get_wea', thinking=False)
    assert out.tool_calls == [] and out.content.startswith("<tool_call>")
