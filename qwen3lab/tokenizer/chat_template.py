"""Render a Hugging Face Jinja chat template exactly as `transformers` does.

This module owns the Jinja environment (sandbox, filters, globals, the
`{% generation %}` tag) and the preparation of the template inputs (messages,
tools, special tokens). It knows nothing about token ids: the caller encodes
the rendered string. It mirrors `transformers.utils.chat_template_utils`
(`_compile_jinja_template`, `render_jinja_template`) and the message
normalisation done by `PreTrainedTokenizerBase.apply_chat_template`; tests
check byte equality against it. Python callables as tools are not supported,
only JSON-schema dicts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names a message's reasoning may arrive under; templates read `reasoning_content`
# (Qwen3) or `thinking` (gpt-oss), so every name is filled from the first one present.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# (rendered_blocks, spans) while `render_chat_template(..., return_generation_spans=True)` runs.
_tracking: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar(
    "qwen3lab_generation_tracking", default=None
)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text (for loss masks).

    Renders its body unchanged; when tracking is on it records the character
    span of the body in the output, as transformers' `AssistantTracker` does.
    """

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        text = caller()
        tracking = _tracking.get()
        if tracking is not None:
            blocks, spans = tracking
            start = sum(len(b) for b in blocks)
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters (<, >, &, '), which would change the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    # A callable stand-in for `dict` that exposes no class attributes to the sandbox.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Underscore names on a namespace could reach CPython internals; refuse them.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}."
            )


@lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile `template` in the same sandboxed environment transformers uses (cached)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """Rebuild `value` from plain JSON types so the sandbox only sees inert data."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models (OpenAI SDK messages)
        return _plain(value.model_dump())
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def prepare_messages(messages: list) -> list[dict]:
    """Messages as the template sees them: plain dicts, None-valued keys dropped, reasoning aliased.

    Keys set to None are dropped because OpenAI clients send `content: null` /
    `tool_calls: null`, and templates handle a missing key but may print "None".
    """
    out = []
    for message in _plain(list(messages)):
        if not isinstance(message, dict):
            raise TypeError(f"Chat messages must be dicts (OpenAI format), got {message!r}.")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _prepare_tools(tools: list | None) -> list[dict] | None:
    if tools is None:
        return None
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise TypeError(
                "Tools must be JSON-schema dicts such as "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}; '
                f"got {type(tool).__name__}. Python callables are not supported."
            )
    return _plain(list(tools))


def render_chat_template(
    template: str,
    messages: list,
    tools: list | None = None,
    documents: list | None = None,
    add_generation_prompt: bool = False,
    return_generation_spans: bool = False,
    **variables: Any,
) -> str | tuple[str, list[tuple[int, int]]]:
    """Render `template` for one conversation; byte-equal to transformers' output.

    `variables` become template variables: pass the special tokens
    (`bos_token`, `eos_token`, ...) and switches such as `enable_thinking`.
    With `return_generation_spans`, also return the (start, end) character
    spans of `{% generation %}` blocks.
    """
    if not messages:
        raise ValueError("Cannot apply a chat template to an empty conversation.")
    compiled = compile_chat_template(template)
    kwargs = dict(
        messages=prepare_messages(messages),
        tools=_prepare_tools(tools),
        documents=_plain(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain(variables),
    )
    if not return_generation_spans:
        return compiled.render(**kwargs)
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    with _track(blocks, spans):
        for block in compiled.generate(**kwargs):
            blocks.append(block)
    return "".join(blocks), spans


@contextmanager
def _track(blocks, spans):
    token = _tracking.set((blocks, spans))
    try:
        yield
    finally:
        _tracking.reset(token)
