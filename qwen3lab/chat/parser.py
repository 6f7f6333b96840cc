"""Split Qwen3 output text into reasoning, answer and tool calls.

This module owns reading generated text: `<think>...</think>` reasoning and
`<tool_call>{json}</tool_call>` blocks (Hermes style, as Qwen3's template
asks for). One streaming state machine does the work; `parse_output` feeds it
the whole text at once, so batch and streaming results agree by construction.
It works on text, not ids, and never raises on bad model output: a malformed
tool call stays in the text verbatim and is reported in `parse_errors`.

Rules:
- thinking=True: text before the first `</think>` is reasoning (the prompt may
  already hold `<think>\\n`, so the opening tag is optional); if `</think>`
  never comes, all of it is reasoning (the thought was cut off).
- thinking=False: think tags are removed and any text inside them is kept in
  the content, so the answer is never hidden.
- Tool calls are taken out wherever they appear, reasoning included.
- Content and reasoning are stripped of surrounding whitespace; empty -> None.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Literal

THINK_START, THINK_END = "<think>", "</think>"
CALL_START, CALL_END = "<tool_call>", "</tool_call>"
_OUTSIDE_TAGS = (THINK_START, THINK_END, CALL_START)


@dataclass
class ParsedOutput:
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)


@dataclass
class ParserEvent:
    """One streaming step: a text delta for `kind` reasoning/content, or a finished tool call."""

    kind: Literal["reasoning", "content", "tool_call"]
    text: str = ""
    tool_call: dict | None = None


def _partial_tag_len(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    for n in range(min(len(text), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(text[-n:]) for t in tags):
            return n
    return 0


def _parse_tool_call(body: str) -> tuple[dict | None, str | None]:
    """Return (OpenAI tool call, None) or (None, error message) for the JSON between the tags."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None, 'expected a JSON object with a "name" string'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments already serialised
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return None, f"arguments are a string but not JSON ({e})"
    if not isinstance(args, dict):
        return None, f"arguments must be a JSON object, got {type(args).__name__}"
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }, None


class _Section:
    """Emits one stream (reasoning or content) with its surrounding whitespace stripped.

    Leading whitespace is dropped; trailing whitespace is held until more text
    follows, so the deltas always join to the `.strip()` of the whole section.
    """

    def __init__(self, kind: str):
        self.kind, self.started, self.pending_ws, self.parts = kind, False, "", []

    def emit(self, text: str, events: list[ParserEvent]) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        full = self.pending_ws + text
        body = full.rstrip()
        self.pending_ws = full[len(body) :]
        if body:
            self.parts.append(body)
            events.append(ParserEvent(self.kind, body))

    def value(self) -> str | None:
        return "".join(self.parts) or None


class StreamingOutputParser:
    """Feed generated text deltas; get reasoning/content deltas and tool calls as they complete.

    Text that might be the start of a tag (e.g. a trailing "<too") is held back
    until the next delta decides it. Call `finish()` at the end of generation,
    then `result()` for the same `ParsedOutput` that `parse_output` returns.
    """

    def __init__(self, thinking: bool):
        self.thinking = thinking
        self._reasoning, self._content = _Section("reasoning"), _Section("content")
        self._section = self._reasoning if thinking else self._content
        self._buf = ""
        self._in_call = False
        self._tool_calls: list[dict] = []
        self._errors: list[str] = []
        self._finished = False

    def feed(self, delta: str) -> list[ParserEvent]:
        if self._finished:
            raise RuntimeError("StreamingOutputParser.feed() called after finish().")
        self._buf += delta
        events: list[ParserEvent] = []
        while self._step(events):
            pass
        return events

    def _step(self, events: list[ParserEvent]) -> bool:
        """Consume one tag (and the text before it) from the buffer; False when more input is needed."""
        buf = self._buf
        if self._in_call:
            end = buf.find(CALL_END)
            if end < 0:
                return False
            self._close_call(buf[:end], CALL_END, events)
            self._buf = buf[end + len(CALL_END) :]
            return True
        found = [(i, tag) for tag in _OUTSIDE_TAGS if (i := buf.find(tag)) >= 0]
        if not found:
            keep = _partial_tag_len(buf, _OUTSIDE_TAGS)
            self._section.emit(buf[: len(buf) - keep], events)
            self._buf = buf[len(buf) - keep :]
            return False
        i, tag = min(found)
        self._section.emit(buf[:i], events)
        self._buf = buf[i + len(tag) :]
        if tag == CALL_START:
            self._in_call = True
        elif tag == THINK_END and self.thinking:
            self._section = self._content
        # Other think tags (an explicit opening tag, or any tag with thinking off) are dropped.
        return True

    def _close_call(self, body: str, closing: str, events: list[ParserEvent]) -> None:
        self._in_call = False
        call, error = _parse_tool_call(body.strip())
        if call is not None:
            self._tool_calls.append(call)
            events.append(ParserEvent("tool_call", tool_call=call))
            return
        n = len(self._tool_calls) + len(self._errors) + 1
        self._errors.append(f"tool call #{n}: {error}; kept as text: {CALL_START + body + closing!r}")
        self._section.emit(CALL_START + body + closing, events)

    def finish(self) -> list[ParserEvent]:
        """End of generation: flush held-back text; an unclosed tool call is parsed as if closed."""
        events: list[ParserEvent] = []
        if not self._finished:
            self._finished = True
            if self._in_call:
                self._close_call(self._buf, "", events)
            else:
                self._section.emit(self._buf, events)
            self._buf = ""
        return events

    def result(self) -> ParsedOutput:
        return ParsedOutput(
            content=self._content.value(),
            reasoning_content=self._reasoning.value(),
            tool_calls=list(self._tool_calls),
            parse_errors=list(self._errors),
        )


def parse_output(text: str, thinking: bool) -> ParsedOutput:
    """Parse a whole generation; see the module docstring for the rules."""
    parser = StreamingOutputParser(thinking)
    parser.feed(text)
    parser.finish()
    return parser.result()
