"""Turn a chat-completions request into engine input: prompt ids, thinking mode, decoding constraint.

Owns: cleaning OpenAI messages for the chat template (``content: null`` -> "", content parts
joined, ``developer`` -> ``system``), the ``tools`` / ``tool_choice`` rules, and picking the
constraint factory from ``qwen3lab.structured`` for forced tool calls and ``response_format``.
Leaves out: sampling fields (``protocol.py``) and output formatting (``chat_output.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import APIError, bad_request, encode_bounded
from .protocol import ChatCompletionRequest

ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass
class ChatPrompt:
    token_ids: list[int]
    text: str
    thinking: bool  # generated text starts inside <think>
    constraint_factory: Callable[[], Any] | None
    forced_tool_call: bool  # tool_choice "required" or a named function


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""  # the Qwen3 template cannot render None (assistant turns with only tool calls)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                  "are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where}.content must be a string, a list of text parts or null", "messages")


def clean_messages(messages: list[dict]) -> list[dict]:
    if not messages:
        raise bad_request("messages must hold at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                              "messages")
        m = {**m, "role": "system" if role == "developer" else role,
             "content": _content_text(m.get("content"), f"messages[{i}]")}
        out.append(m)
    return out


def _tool_names(tools: list[dict]) -> list[str]:
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., '
                              '"parameters": {...}}}', "tools")
        names.append(fn["name"])
    return names


def _structured():
    try:
        from .. import structured
    except ImportError:
        raise APIError(400, "constrained decoding (tool_choice required/named, response_format json) is not "
                            "available: qwen3lab.structured is missing from this build", "response_format") from None
    return structured


def _constraint(req: ChatCompletionRequest, tokenizer, thinking: bool) -> tuple[Callable | None, bool]:
    tools, choice = req.tools, req.tool_choice
    names = _tool_names(tools) if tools else []
    function_name = None
    if isinstance(choice, dict):
        fn = choice.get("function") or {}
        function_name = fn.get("name")
        if choice.get("type", "function") != "function" or not isinstance(function_name, str):
            raise bad_request('tool_choice must be "none", "auto", "required" or '
                              '{"type": "function", "function": {"name": ...}}', "tool_choice")
        if function_name not in names:
            raise bad_request(f"tool_choice names function {function_name!r}, which is not in tools "
                              f"({', '.join(names) or 'none given'})", "tool_choice")
    elif choice == "required" and not names:
        raise bad_request('tool_choice "required" needs at least one tool in tools', "tool_choice")
    if function_name is not None or choice == "required":
        factory = _structured().tool_call_constraint_factory(tokenizer, tools, function_name=function_name,
                                                             thinking=thinking)
        return factory, True
    fmt = req.response_format or {"type": "text"}
    kind = fmt.get("type")
    if kind == "text":
        return None, False
    if kind == "json_object":
        return _structured().json_constraint_factory(tokenizer, None, thinking=thinking), False
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_request('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
                              "response_format")
        # Strict or not, the schema is enforced; non-strict only lets unsupported keywords be ignored.
        extra = {"strict": False} if spec.get("strict") is False else {}
        return _structured().json_constraint_factory(tokenizer, spec.get("schema") or None, thinking=thinking,
                                                     **extra), False
    raise bad_request(f'response_format.type must be "text", "json_object" or "json_schema", got {kind!r}',
                      "response_format")


# Arguments of the rendering call itself, not template variables: a request may not set them.
RENDER_ARGUMENTS = frozenset({"messages", "tools", "documents", "add_generation_prompt", "tokenize",
                              "return_generation_spans", "continue_final_message", "chat_template", "tokenizer"})


def _template_kwargs(req: ChatCompletionRequest, tokenizer) -> dict:
    """The request's template variables; the renderer's own arguments and the tokenizer's special tokens
    (``bos_token``, ...) stay the server's, so a client cannot change what its prompt is framed with."""
    kwargs = dict(req.chat_template_kwargs or {})
    reserved = sorted(k for k in kwargs
                      if k in RENDER_ARGUMENTS or k in tokenizer.special_tokens_map or k.endswith("_token"))
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(map(repr, reserved))}: rendering arguments "
                          "and special tokens belong to the server", "chat_template_kwargs")
    return kwargs


def build_chat_prompt(req: ChatCompletionRequest, llm) -> ChatPrompt:
    """Render and tokenise the conversation; raises APIError 400 for anything the client got wrong."""
    kwargs = _template_kwargs(req, llm.tokenizer)
    enable_thinking = kwargs.pop("enable_thinking", None)
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise bad_request("chat_template_kwargs.enable_thinking must be true or false", "chat_template_kwargs")
    thinking = llm.thinking_enabled(enable_thinking)
    messages = clean_messages(req.messages)
    tools = req.tools if req.tools and req.tool_choice != "none" else None
    try:
        text = llm.render_chat(messages, tools, enable_thinking, **kwargs)
    except (ValueError, TypeError) as e:
        raise bad_request(f"cannot render the chat template: {e}", "messages") from None
    except Exception as e:  # jinja errors raised by the template itself (raise_exception)
        raise bad_request(f"the chat template rejected the conversation: {e}", "messages") from None
    try:
        factory, forced = _constraint(req, llm.tokenizer, thinking)
    except ValueError as e:  # a schema or tool list the grammar compiler cannot take
        param = "tools" if req.tool_choice not in (None, "auto", "none") else "response_format"
        raise bad_request(str(e), param) from None
    ids = encode_bounded(llm.tokenizer, text, llm.engine.max_model_len, "messages", add_special_tokens=False)
    return ChatPrompt(ids, text, thinking, factory, forced)
