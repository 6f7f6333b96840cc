"""Build a `tokenizers.Tokenizer` from the tokenizer a GGUF file describes in its metadata.

Owns: byte-level BPE ("gpt2" `tokenizer.ggml.model`) vocabularies, merges and added tokens, the
pre-tokenizer chosen by `tokenizer.ggml.pre`, and the chat template / BOS / EOS settings.
Leaves out: sentencepiece ("llama") vocabularies, chat rendering and BOS insertion (the
`qwen3lab.tokenizer` wrapper does those from what `build_tokenizer` returns).

The regexes are the ones the models' own `tokenizer.json` files use, which is what llama.cpp's
`llama-vocab.cpp` reimplements for each pre-tokenizer name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

# llama.cpp token types (gguf.TokenType): only these two become added tokens.
_CONTROL, _USER_DEFINED = 3, 4

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's, except that numbers split in runs of up to three digits.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` -> pre-tokenizer family. Names grouped as llama-vocab.cpp groups them.
_PRE_FAMILY = {
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"), "qwen2"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), "llama3"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), "digits"),
    **dict.fromkeys(("gpt-2", "gpt2", "mpt", "olmo", "jais", "default"), "gpt2"),
}
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_FAMILY))


@lru_cache(maxsize=1)
def _byte_spelling() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest map to 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in spelling:
            spelling[b], extra = chr(256 + extra), extra + 1
    return spelling


def _pre_tokenizer(family: str) -> pre_tokenizers.PreTokenizer:
    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if family == "digits":  # SmolLM / StarCoder tokenizer.json: every digit on its own, then GPT-2's split
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    split = {"qwen2": _QWEN2_SPLIT, "llama3": _LLAMA3_SPLIT}[family]
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _pre_family(metadata: Mapping[str, Any]) -> str:
    pre = metadata.get("tokenizer.ggml.pre")
    if pre is None:
        # Files written before llama.cpp recorded the pre-tokenizer; it falls back to a guess too.
        warnings.warn("GGUF has no tokenizer.ggml.pre; using GPT-2's byte-level split", stacklevel=3)
        return "gpt2"
    if pre not in _PRE_FAMILY:
        raise NotImplementedError(
            f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
        )
    return _PRE_FAMILY[pre]


def build_tokenizer(metadata: Mapping[str, Any]) -> tuple[Tokenizer, dict[str, Any]]:
    """`(tokenizer, dict(chat_template, bos_token, eos_token, add_bos_token, ...))` from GGUF metadata.

    `metadata` maps GGUF keys to plain Python values (strings, numbers, lists), as
    `gguf_loader.read_metadata` returns them. The dict is the rest of `qwen3lab.tokenizer.Tokenizer`'s
    arguments (also add_eos_token, pad_token, unk_token); the tokenizer itself never adds BOS.
    """
    kind = metadata.get("tokenizer.ggml.model")
    if kind == "llama":
        raise NotImplementedError(
            "GGUF sentencepiece ('llama') tokenizers are not supported; only byte-level BPE ('gpt2') is. "
            "Load the model's tokenizer.json from its Hugging Face repository instead."
        )
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported; only 'gpt2' (byte-level BPE) is")
    family = _pre_family(metadata)

    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    spelling = _byte_spelling()
    alphabet = set(spelling.values())
    added = {i for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)}
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        # Added tokens are stored as raw text and matched as such; a plain token outside the byte
        # alphabet was stored unspelled, so spell it the way the merges see it.
        if i not in added and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, i)
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=family == "llama3")
    )
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()  # Qwen's tokenizer.json normalises; llama.cpp does not
    tok.pre_tokenizer = _pre_tokenizer(family)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # CONTROL tokens (<|im_end|>) are special; USER_DEFINED ones (<think>, <tool_call>) are kept whole but
    # stay visible when decoding with skip_special_tokens, as in Qwen's own tokenizer.json.
    tok.add_tokens(
        [
            AddedToken(tokens[i], special=types[i] == _CONTROL, normalized=False)
            for i in sorted(added)
            if vocab.get(tokens[i]) == i
        ]
    )

    def token_text(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = family == "llama3"  # llama.cpp's default when the file does not say
    return tok, dict(
        chat_template=metadata.get("tokenizer.chat_template"),
        bos_token=token_text("bos"),
        eos_token=token_text("eos"),
        add_bos_token=bool(add_bos),
        add_eos_token=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        pad_token=token_text("padding"),
        unk_token=token_text("unknown"),
    )


def load_gguf_tokenizer(path) -> tuple[Tokenizer, dict[str, Any]]:
    """`build_tokenizer` for the metadata of the GGUF file at `path`."""
    from .gguf_loader import open_gguf, read_metadata

    return build_tokenizer(read_metadata(open_gguf(path)))
