"""The grammar library behind structured output: llguidance, wrapped in three small functions.

Owns: turning a ``qwen3lab`` tokenizer into llguidance's ``LLTokenizer`` (cached, it costs ~1.5 s
for Qwen's 151k tokens), compiling a Lark grammar into a validated prototype matcher, and
converting llguidance's packed bitmask into the bool tensor the engine wants. Leaves out what the
grammars say (``grammars.py``) and the per-sequence state (``constraint.py``).

Why llguidance and not xgrammar: llguidance 1.9 is one self-contained wheel with no Python
dependencies, reads the ``tokenizers`` JSON we already hold, and embeds JSON schemas inside a
Lark grammar (``%json{...}``), which is exactly what Hermes tool calls need. xgrammar 0.2.x pulls
in ``transformers`` and ``triton`` at run time, heavy for a CPU-first engine.
"""

from __future__ import annotations

import threading
import weakref

import llguidance
import numpy as np
import torch

_TOKENIZERS: "weakref.WeakKeyDictionary[object, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a constrained answer: the tokenizer's eos and ChatML's ``<|im_end|>``."""
    ids = [tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>")]
    return sorted({i for i in ids if i is not None})


def ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of ``tokenizer`` (a ``qwen3lab.tokenizer.Tokenizer``), built once per object."""
    with _LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is None:
            eos = stop_token_ids(tokenizer)
            if not eos:
                raise ValueError("structured output needs an end-of-sequence token, and this tokenizer has "
                                 "neither an eos_token nor <|im_end|>; set eos_token in tokenizer_config.json")
            # n_vocab is the tokenizer's own size: ids the model pads its vocabulary with are
            # masked out by the constraint, never handed to llguidance.
            cached = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=tokenizer.vocab_size, eos_token=eos)
            _TOKENIZERS[tokenizer] = cached
        return cached


def compile_grammar(tokenizer, lark: str, what: str) -> llguidance.LLMatcher:
    """A fresh matcher for the Lark grammar ``lark``; ValueError naming ``what`` when it is invalid."""
    lltok = ll_tokenizer(tokenizer)
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar, lltok)
    if error:
        raise ValueError(f"invalid {what}: {error}")
    # log_level 0: llguidance would print parse errors to stderr; the constraint logs them instead.
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(f"invalid {what}: {matcher.get_error()}")
    return matcher


def allowed_mask(matcher: llguidance.LLMatcher, vocab_size: int, n_tokens: int) -> torch.Tensor:
    """The matcher's next-token mask as a bool tensor of ``vocab_size``; ids from ``n_tokens`` on
    (the model's padding past the tokenizer) are always False."""
    packed = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    # Bit i of the little-endian 32-bit word j stands for token 32*j + i.
    bits = np.unpackbits(packed, bitorder="little")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    n = min(vocab_size, n_tokens, bits.shape[0])
    mask[:n] = torch.from_numpy(bits[:n].astype(np.bool_))
    return mask


def only(token_ids: list[int], vocab_size: int) -> torch.Tensor:
    """A mask that allows exactly ``token_ids`` (those inside the vocabulary)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[[t for t in token_ids if t < vocab_size]] = True
    return mask
