"""Tokenizer: text <-> ids, chat templates, streaming detokenization."""

from .chat_template import compile_chat_template, render_chat_template
from .incremental import IncrementalDetokenizer
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "IncrementalDetokenizer", "render_chat_template", "compile_chat_template"]
