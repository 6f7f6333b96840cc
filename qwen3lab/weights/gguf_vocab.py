"""The tokenizer section of a GGUF file we write: `tokenizer.ggml.*` and `tokenizer.chat_template`.

Owns: turning a Hugging Face byte-level BPE tokenizer (our `qwen3lab.tokenizer.Tokenizer`) into the
fields llama.cpp's converter writes (token list padded to the model's vocab size, token types,
merges, pre-tokenizer name, special token ids, add_bos/add_eos, chat templates), copying those
fields from a GGUF file we re-export, and writing them with a `GGUFWriter`.
Leaves out: reading them back (`gguf_tokenizer`), sentencepiece vocabularies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import gguf

from .gguf_tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT

# gguf.TokenType values, as llama.cpp's converter assigns them.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to rebuild the tokenizer; ids are None when the model has no such token."""

    model: str
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # "bos", "eos", "padding", "unknown", "eot", ...
    add_bos: bool | None = None  # None: not written (a re-exported file that did not say)
    add_eos: bool | None = None
    chat_template: str | dict[str, str] | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.token_types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges:
            w.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            w.add_uint32(f"tokenizer.ggml.{kind}_token_id", token_id)
        if self.add_bos is not None:
            w.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            w.add_add_eos_token(self.add_eos)
        if isinstance(self.chat_template, dict):
            w.add_chat_template([{"name": k, "template": v} for k, v in self.chat_template.items()])
        elif self.chat_template:
            w.add_chat_template(self.chat_template)


def _looks_special(text: str) -> bool:
    # The converter's does_token_look_special, for the spellings our model families use.
    return text.startswith("<|") and text.endswith("|>")


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json pre_tokenizer we can reproduce."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [p.get("type") for p in parts]
    if kinds == ["Split", "ByteLevel"]:
        regex = parts[0].get("pattern", {}).get("Regex")
        if regex == _QWEN2_SPLIT:
            return "qwen2"
        if regex == _LLAMA3_SPLIT:
            return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    raise NotImplementedError(
        f"tokenizer.json pre_tokenizer {json.dumps(pre)[:300]} has no llama.cpp equivalent we know; "
        "supported: the Qwen2 and Llama 3 split regexes, SmolLM's digit split, plain GPT-2 byte level"
    )


def _merge_text(merge: str | list[str]) -> str:
    if isinstance(merge, str):
        return merge
    if " " not in merge[0] and " " not in merge[1]:
        return f"{merge[0]} {merge[1]}"
    # gguf-py's SpecialVocab: a space inside a merge part is written as U+0120 so "a b" stays splittable.
    return " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge)


def vocab_from_tokenizer(tokenizer, vocab_size: int, bos_token_id: int | None = None,
                         eos_token_ids: tuple[int, ...] = ()) -> GGUFVocab:
    """The GGUF fields for `tokenizer` (a `qwen3lab.tokenizer.Tokenizer`), padded to `vocab_size` ids.

    `bos_token_id` / `eos_token_ids` come from config.json and are used where tokenizer_config.json
    names no such token (Qwen3 has no BOS token, but llama.cpp wants an id), as the converter does.
    """
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    if spec["model"].get("type") != "BPE":
        raise NotImplementedError(f"tokenizer model {spec['model'].get('type')!r} cannot be exported; only BPE")
    by_id = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    added = backend.get_added_tokens_decoder()
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id or by_id[i] == f"[PAD{i}]":
            # The converter's filler for ids the tokenizer never produces (kept UNUSED when a
            # tokenizer.json rebuilt from a GGUF file carries it back as a plain token).
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special or _looks_special(by_id[i]) else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)

    ids: dict[str, int] = {}
    unk_id = tokenizer.token_to_id(tokenizer.unk_token) if tokenizer.unk_token else None
    for kind, tok_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                         ("padding", tokenizer.pad_token_id), ("unknown", unk_id)):
        if tok_id is not None:
            ids[kind] = tok_id
    if "bos" not in ids and bos_token_id is not None:
        ids["bos"] = bos_token_id
    if "eos" not in ids and eos_token_ids:
        ids["eos"] = eos_token_ids[0]
    # Whether BOS/EOS get added is what the tokenizer does, not what a config key claims.
    with_special, plain = tokenizer.encode("a"), tokenizer.encode("a", add_special_tokens=False)
    add_bos = "bos" in ids and len(with_special) > len(plain) and with_special[0] == ids["bos"]
    add_eos = "eos" in ids and len(with_special) > len(plain) and with_special[-1] == ids["eos"]
    return GGUFVocab(
        model="gpt2",
        pre=_pre_name(spec.get("pre_tokenizer")),
        tokens=tokens,
        token_types=types,
        merges=[_merge_text(m) for m in spec["model"].get("merges", [])],
        special_ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=tokenizer.chat_template,
    )


def vocab_from_gguf(meta: dict[str, Any]) -> GGUFVocab:
    """The tokenizer fields of a GGUF file's metadata (as `gguf_loader.read_metadata` returns it), unchanged."""
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError("the GGUF file has no tokenizer.ggml.tokens: it carries no tokenizer to export")
    prefix = "tokenizer.ggml."
    ids = {k[len(prefix):-len("_token_id")]: int(v) for k, v in meta.items()
           if k.startswith(prefix) and k.endswith("_token_id")}
    template: str | dict[str, str] | None = meta.get("tokenizer.chat_template")
    named = {n: meta[f"tokenizer.chat_template.{n}"] for n in meta.get("tokenizer.chat_templates", [])
             if f"tokenizer.chat_template.{n}" in meta}
    if named:
        template = {**({"default": template} if template else {}), **named}
    tokens = list(meta["tokenizer.ggml.tokens"])
    return GGUFVocab(
        model=meta.get("tokenizer.ggml.model", "gpt2"),
        pre=meta.get("tokenizer.ggml.pre"),
        tokens=tokens,
        token_types=list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)),
        merges=list(meta.get("tokenizer.ggml.merges", [])),
        scores=list(meta["tokenizer.ggml.scores"]) if "tokenizer.ggml.scores" in meta else None,
        special_ids=ids,
        add_bos=meta.get("tokenizer.ggml.add_bos_token"),
        add_eos=meta.get("tokenizer.ggml.add_eos_token"),
        chat_template=template,
    )
