"""A conversation -> ``(token ids, loss mask)`` with the checkpoint's own chat template.

The mask is derived from the rendered text, not from a hand-written copy of the template: the
whole conversation is rendered once; the assistant header (what ``add_generation_prompt`` appends)
and the end-of-turn marker (what follows an assistant's content) are learned by rendering two probe
conversations; each assistant turn is then the text between a header and its end marker, end marker
included (the model must learn to stop). Token i is trained when its first character lies in such a
span. ``train_thinking=False`` keeps a leading ``<think>...</think>`` block of a turn in the input but
out of the loss. Works for ChatML-style templates (Qwen3, Qwen2, SmolLM2); a template whose
assistant turns cannot be found this way raises an error naming what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..tokenizer import Tokenizer

_PROBE = "QWEN3LAB_PROBE_7f3a"


@dataclass(frozen=True)
class TurnMarkers:
    header: str  # text that opens an assistant turn, e.g. "<|im_start|>assistant\n"
    end: str  # text that closes it, e.g. "<|im_end|>"


@lru_cache(maxsize=8)
def _markers(template: str, special: tuple) -> TurnMarkers:
    from ..tokenizer.chat_template import render_chat_template

    kw = dict(special)
    user = [{"role": "user", "content": _PROBE}]
    plain = render_chat_template(template, user, **kw)
    with_prompt = render_chat_template(template, user, add_generation_prompt=True, **kw)
    if not with_prompt.startswith(plain) or with_prompt == plain:
        raise ValueError("cannot find the assistant header: the chat template adds nothing for "
                         "add_generation_prompt=True")
    header = with_prompt[len(plain):]
    full = render_chat_template(template, user + [{"role": "assistant", "content": _PROBE + "A"}], **kw)
    tail = full.split(_PROBE + "A", 1)[1]
    end = tail.rstrip()  # the newline after the end token belongs to the next turn's framing
    if not end:
        raise ValueError("cannot find the end-of-turn marker: the chat template writes nothing after an "
                         "assistant message")
    return TurnMarkers(header, end)


def turn_markers(tokenizer: Tokenizer, tools: list | None = None) -> TurnMarkers:
    return _markers(tokenizer.get_chat_template(tools), tuple(sorted(tokenizer.special_tokens_map.items())))


def assistant_spans(text: str, markers: TurnMarkers, n_assistant: int, train_thinking: bool = True,
                    think_open: str = "<think>", think_close: str = "</think>") -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``text`` (thinking cut out when not trained)."""
    spans, pos = [], 0
    while True:
        start = text.find(markers.header, pos)
        if start < 0:
            break
        body = start + len(markers.header)
        end = text.find(markers.end, body)
        if end < 0:
            raise ValueError(f"assistant turn at character {start} has no end marker {markers.end!r}")
        stop = end + len(markers.end)
        if not train_thinking and text.startswith(think_open, body):
            close = text.find(think_close, body)
            if 0 <= close < end:
                body = close + len(think_close)
                body += len(text[body:end]) - len(text[body:end].lstrip("\n"))  # the blank line after it
        spans.append((body, stop))
        pos = stop
    if len(spans) != n_assistant:
        raise ValueError(f"found {len(spans)} assistant turns opened by {markers.header!r} in the rendered "
                         f"conversation, expected {n_assistant}")
    return spans


def render_conversation(tokenizer: Tokenizer, messages: list[dict], tools: list | None = None,
                        train_thinking: bool = True, **template_kwargs) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether it is trained (an assistant token)."""
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=False, **template_kwargs)
    n_assistant = sum(m.get("role") == "assistant" for m in messages)
    if n_assistant == 0:
        raise ValueError("a training conversation needs at least one assistant message")
    spans = assistant_spans(text, turn_markers(tokenizer, tools), n_assistant, train_thinking)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    mask, k = [], 0
    for s, _ in enc.offsets:
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        mask.append(k < len(spans) and spans[k][0] <= s < spans[k][1])
    return list(enc.ids), mask
