"""Chat-completion responses: the whole message, or SSE chunks as the text streams in.

Owns: splitting generated text into ``reasoning_content`` / ``content`` / ``tool_calls`` with the
chat parser (the same state machine for both modes, so they agree), OpenAI's finish reasons
(``tool_calls`` when the model called a tool) and ``usage``. Leaves out: HTTP and the engine.
"""

from __future__ import annotations

from ..chat.parser import StreamingOutputParser, parse_output
from ..engine.outputs import StreamDelta
from .driver import Done
from .logprobs import chat_logprobs


def finish_reason(reason: str | None, has_tool_calls: bool) -> str | None:
    if reason == "stop" and has_tool_calls:
        return "tool_calls"
    return reason


def reasoning_tokens(token_ids: list[int], thinking: bool, think_end: int | None) -> int:
    """Output tokens of the thought: up to and including </think>, all of them if it never closed."""
    if not thinking or think_end is None:
        return 0
    return token_ids.index(think_end) + 1 if think_end in token_ids else len(token_ids)


def usage(done: Done, thinking: bool = False, think_end: int | None = None) -> dict:
    completion = sum(len(o.token_ids) for o in done.output.outputs)
    reasoning = sum(reasoning_tokens(o.token_ids, thinking, think_end) for o in done.output.outputs)
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": completion,
            "total_tokens": done.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def chat_response(done: Done, *, response_id: str, created: int, model: str, thinking: bool, tokenizer,
                  top_logprobs: int | None, think_end: int | None = None) -> dict:
    choices = []
    for out in done.output.outputs:
        parsed = parse_output(out.text, thinking)
        message: dict = {"role": "assistant", "content": parsed.content,
                         "reasoning_content": parsed.reasoning_content}
        if parsed.tool_calls:
            message["tool_calls"] = parsed.tool_calls
        elif message["content"] is None:
            message["content"] = ""
        logprobs = None
        if top_logprobs is not None and out.logprobs is not None:
            logprobs = {"content": chat_logprobs(tokenizer, out.token_ids, out.logprobs, top_logprobs)}
        choices.append({"index": out.index, "message": message, "logprobs": logprobs,
                        "finish_reason": finish_reason(out.finish_reason, bool(parsed.tool_calls))})
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage(done, thinking, think_end)}


class ChoiceStream:
    """One choice of a streamed chat completion: engine deltas in, OpenAI ``delta`` objects out."""

    def __init__(self, index: int, thinking: bool, tokenizer, top_logprobs: int | None):
        self.index, self.tokenizer, self.top_logprobs = index, tokenizer, top_logprobs
        self.parser = StreamingOutputParser(thinking)
        self.num_tool_calls = 0

    def first(self) -> dict:
        return {"index": self.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def feed(self, d: StreamDelta) -> list[dict]:
        """Choice objects for this engine delta (maybe none); the last one carries the finish reason."""
        events = self.parser.feed(d.text)
        if d.finished:
            events += self.parser.finish()
        deltas: list[dict] = []
        text: dict = {}
        for ev in events:
            if ev.kind.startswith("tool_call"):
                if text:
                    deltas.append(text)
                    text = {}
            # OpenAI streams a call as a header (id, name) and then argument fragments: here as the model
            # writes them (tool_call_start, tool_call_args), or all at once for a call that did not stream.
            if ev.kind == "tool_call_start":
                self.num_tool_calls += 1
                deltas.append({"tool_calls": [{"index": self.num_tool_calls - 1, "id": ev.tool_call["id"],
                                               "type": "function",
                                               "function": {"name": ev.tool_call["name"], "arguments": ""}}]})
            elif ev.kind == "tool_call_args":
                deltas.append({"tool_calls": [{"index": self.num_tool_calls - 1, "function": {"arguments": ev.text}}]})
            elif ev.kind == "tool_call" and not ev.streamed:
                call, i = ev.tool_call, self.num_tool_calls
                self.num_tool_calls += 1
                deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]})
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]})
            elif ev.kind in ("reasoning", "content"):
                key = "reasoning_content" if ev.kind == "reasoning" else "content"
                text[key] = text.get(key, "") + ev.text
        if text:
            deltas.append(text)
        logprobs = None
        if self.top_logprobs is not None and d.logprobs:
            logprobs = {"content": chat_logprobs(self.tokenizer, d.token_ids, d.logprobs, self.top_logprobs)}
            if not deltas:
                deltas.append({})
        choices = [{"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None}
                   for delta in deltas]
        if logprobs is not None:
            choices[0]["logprobs"] = logprobs
        if d.finished:
            reason = finish_reason(d.finish_reason, self.num_tool_calls > 0)
            choices.append({"index": self.index, "delta": {}, "logprobs": None, "finish_reason": reason})
        return choices
