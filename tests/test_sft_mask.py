"""Assistant-only loss masks on the real Qwen3 chat template: tools, tool results, reasoning."""

import pytest
from checkpoints import qwen_tokenizer_dir

from qwen3lab.tokenizer import Tokenizer
from qwen3lab.train.render import render_conversation

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello.", "reasoning_content": "Old reasoning is dropped."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "reasoning_content": "I need the tool twice.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "content": "18C sunny"},
    {"role": "tool", "content": "25C clear"},
    {"role": "assistant", "content": "Paris 18C, Rome 25C.", "reasoning_content": "Both known."},
]
CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(qwen_tokenizer_dir())


def _trained_segments(tok, ids, mask):
    segs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            segs.append(tok.decode(cur))
            cur = []
    return segs + ([tok.decode(cur)] if cur else [])


def test_mask_is_exactly_the_assistant_turns(tok):
    ids, mask = render_conversation(tok, CONVERSATION, tools=TOOLS)
    assert ids == tok.encode(tok.apply_chat_template(CONVERSATION, tools=TOOLS, add_generation_prompt=False),
                             add_special_tokens=False)
    assert _trained_segments(tok, ids, mask) == [
        "Hello.<|im_end|>",  # reasoning of a turn before the last user query is not rendered at all
        "<think>\nI need the tool twice.\n</think>\n\n" + CALLS + "<|im_end|>",
        "<think>\nBoth known.\n</think>\n\nParis 18C, Rome 25C.<|im_end|>",
    ]
    # Everything else (system + tools, user turns, tool responses, assistant headers) is context only.
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "<tool_response>\n18C sunny\n</tool_response>" in untrained and "# Tools" in untrained
    assert untrained.count("<|im_start|>assistant\n") == 3


def test_thinking_can_be_left_out_of_the_loss(tok):
    ids, mask = render_conversation(tok, CONVERSATION, tools=TOOLS, train_thinking=False)
    assert _trained_segments(tok, ids, mask) == ["Hello.<|im_end|>", CALLS + "<|im_end|>",
                                                 "Paris 18C, Rome 25C.<|im_end|>"]


def test_conversation_without_assistant_is_refused(tok):
    with pytest.raises(ValueError, match="assistant"):
        render_conversation(tok, [{"role": "user", "content": "hi"}])
