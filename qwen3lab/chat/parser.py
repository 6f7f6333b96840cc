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
- A call written as `{"name": ..., "arguments": {...}}` streams as it is generated: a `tool_call_start`
  event once the name is complete, then `tool_call_args` fragments of the arguments exactly as the
  model writes them (a valid JSON prefix; together they are the final `arguments` string), as vLLM's
  Hermes parser streams them. A call cut off by the end of generation, once its name is known, is
  still a tool call, with the arguments written so far (and a note in `parse_errors`).
"""

from __future__ import annotations

import json
import re
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
    """One streaming step: a text delta for `kind` reasoning/content; a tool call's start (`tool_call`
    holds its id and name) or argument fragment (`text`); or a finished tool call (`streamed`: its start
    and arguments went out as events already)."""

    kind: Literal["reasoning", "content", "tool_call_start", "tool_call_args", "tool_call"]
    text: str = ""
    tool_call: dict | None = None
    streamed: bool = False


# A cut-off call's head: its name complete, maybe the arguments key.
_LOOSE_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")(\s*,\s*"(?:arguments|parameters)"\s*:\s*)?')
# A call's head up to its arguments object: the name is known, and the arguments start with "{".
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


def _object_end(text: str) -> int | None:
    """Index just past the JSON object that opens ``text`` (strings and escapes respected), or None if
    it is not closed yet."""
    depth, in_string, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _partial_tag_len(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    for n in range(min(len(text), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(text[-n:]) for t in tags):
            return n
    return 0


def _raw_arguments(body: str) -> str | None:
    """The arguments object as the model wrote it, when the call has the streaming head."""
    head = _CALL_HEAD.match(body)
    if head is None:
        return None
    end = _object_end(body[head.end():])
    return body[head.end(): head.end() + end] if end is not None else None


def _parse_tool_call(body: str) -> tuple[dict | None, str | None]:
    """Return (OpenAI tool call, None) or (None, error message) for the JSON between the tags. The
    arguments string is the model's own text when it wrote an object, else the object re-serialised."""
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
    raw = _raw_arguments(body)
    if raw is None or json.loads(raw) != args:
        raw = json.dumps(args, ensure_ascii=False)
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": obj["name"], "arguments": raw},
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
        self._call: dict | None = None  # the call being streamed: id, name, where its arguments start, sent
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
                self._stream_call(buf[: len(buf) - _partial_tag_len(buf, (CALL_END,))], events)
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

    def _stream_call(self, body: str, events: list[ParserEvent]) -> None:
        """The unfinished call's start once its name is known, then its arguments as they grow."""
        if self._call is None:
            head = _CALL_HEAD.match(body)
            if head is None:
                return
            try:
                name = json.loads(head.group(1))
            except json.JSONDecodeError:
                return
            if not name:
                return
            self._call = {"id": "call_" + secrets.token_hex(12), "name": name, "start": head.end(), "sent": 0}
            events.append(ParserEvent("tool_call_start", tool_call={"id": self._call["id"], "name": name}))
        args = body[self._call["start"]:]
        end = _object_end(args)
        args = args[:end] if end is not None else args
        if len(args) > self._call["sent"]:
            events.append(ParserEvent("tool_call_args", args[self._call["sent"]:]))
            self._call["sent"] = len(args)

    def _close_call(self, body: str, closing: str, events: list[ParserEvent]) -> None:
        self._in_call = False
        streaming, self._call = self._call, None
        call, error = _parse_tool_call(body.strip())
        if streaming is not None:
            # Its start went out: finish it with what the arguments are (the rest of them), even when the
            # call was cut off or is not valid JSON, so the client's call is never left open.
            args = body[streaming["start"]:]
            end = _object_end(args)
            raw = args[:end] if end is not None else args.rstrip()
            if call is not None and call["function"]["arguments"] == raw:
                call["id"] = streaming["id"]
            else:
                n = len(self._tool_calls) + len(self._errors) + 1
                self._errors.append(f"tool call #{n}: {error or 'arguments not written as an object'}; "
                                    f"sent with the arguments written: {raw!r}")
                call = {"id": streaming["id"], "type": "function",
                        "function": {"name": streaming["name"], "arguments": raw}}
            if len(raw) > streaming["sent"]:
                events.append(ParserEvent("tool_call_args", raw[streaming["sent"]:]))
            self._tool_calls.append(call)
            events.append(ParserEvent("tool_call", tool_call=call, streamed=True))
            return
        if call is None and not closing and (head := _LOOSE_HEAD.match(body)) and json.loads(head.group(1)):
            # Cut off before its arguments began: still the call the model was writing (as vLLM returns it).
            raw = body[head.end():].rstrip() if head.group(2) else ""
            n = len(self._tool_calls) + len(self._errors) + 1
            self._errors.append(f"tool call #{n}: {error}; sent with the arguments written: {raw!r}")
            call = {"id": "call_" + secrets.token_hex(12), "type": "function",
                    "function": {"name": json.loads(head.group(1)), "arguments": raw}}
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
