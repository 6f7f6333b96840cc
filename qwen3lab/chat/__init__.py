"""Chat output handling: split generated text into reasoning, answer and tool calls."""

from .parser import ParsedOutput, ParserEvent, StreamingOutputParser, parse_output

__all__ = ["ParsedOutput", "ParserEvent", "StreamingOutputParser", "parse_output"]
