"""Show a reply on the terminal with its reasoning set apart from the answer.

Owns: turning `ParserEvent`s (from `qwen3lab.chat.StreamingOutputParser`) into output. Reasoning
is dimmed when the stream is a terminal (and NO_COLOR is unset); otherwise it sits between
`[thinking]` and `[/thinking]` lines so that piped output stays readable. Tool calls print as one
`[tool call] name {arguments}` line. Leaves out: splitting the text (the parser does that).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

DIM, RESET = "\x1b[2m", "\x1b[0m"


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


class ReplyPrinter:
    """Write one reply's events as they come; call `close()` once at the end."""

    def __init__(self, stream: TextIO | None = None):
        self.out = stream or sys.stdout
        self.color = use_color(self.out)
        self.in_reasoning = False
        self.wrote = False  # anything of this reply written yet
        self.at_line_start = True

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.wrote = True
            self.at_line_start = text.endswith("\n")

    def _end_reasoning(self) -> None:
        if self.in_reasoning:
            self.in_reasoning = False
            if self.color:
                self._write(RESET + "\n\n")
            else:
                self._write(("" if self.at_line_start else "\n") + "[/thinking]\n")

    def event(self, ev) -> None:
        if ev.kind == "reasoning":
            if not self.in_reasoning:
                self.in_reasoning = True
                self._write(DIM if self.color else "[thinking]\n")
            self._write(ev.text)
        elif ev.kind == "content":
            self._end_reasoning()
            self._write(ev.text)
        elif ev.kind == "tool_call":
            self._end_reasoning()
            fn = ev.tool_call["function"]
            self._write(("" if self.at_line_start else "\n") + f"[tool call] {fn['name']} {fn['arguments']}\n")

    def events(self, evs) -> None:
        for ev in evs:
            self.event(ev)

    def close(self) -> None:
        self._end_reasoning()
        if not self.at_line_start or not self.wrote:
            self._write("\n")


def print_parsed(parsed, stream: TextIO | None = None) -> None:
    """Show a whole `ParsedOutput` the same way a streamed reply is shown."""
    from ..chat import ParserEvent

    printer = ReplyPrinter(stream)
    if parsed.reasoning_content:
        printer.event(ParserEvent("reasoning", parsed.reasoning_content))
    if parsed.content:
        printer.event(ParserEvent("content", parsed.content))
    for call in parsed.tool_calls:
        printer.event(ParserEvent("tool_call", tool_call=call))
    printer.close()
