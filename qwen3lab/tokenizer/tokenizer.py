"""Text <-> token ids for Qwen3 (and other Hugging Face BPE tokenizers).

This module owns loading a checkpoint's tokenizer files, encoding, decoding,
special-token bookkeeping and turning chat messages into a prompt. Encoding is
done by the `tokenizers` library on the checkpoint's own `tokenizer.json`, so
ids equal `transformers.AutoTokenizer`'s. Template rendering lives in
`chat_template.py`, streaming decode in `incremental.py`. It does not parse
model output (see `qwen3lab.chat`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import processors

from .chat_template import render_chat_template

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as "text" or as {"content": "text", ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path, what_to_do: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Could not read {path}: {e}. {what_to_do}") from e


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the checkpoint's special tokens and chat template.

    `chat_template` is a Jinja string, or a dict of named templates (`"default"`,
    `"tool_use"`, ...) as older `tokenizer_config.json` files store them.
    `add_bos_token` / `add_eos_token`: None keeps the post-processor of `tok`
    (what `tokenizer.json` says); a bool replaces it, as transformers does when
    the config sets these keys. Setting them mutates `tok`.
    """

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        chat_template: str | dict[str, str] | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
    ):
        self._tok = tok
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.add_bos_token = bool(add_bos_token) and self.bos_token_id is not None
        self.add_eos_token = bool(add_eos_token) and self.eos_token_id is not None
        if add_bos_token is not None or add_eos_token is not None:
            self._install_post_processor()

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Load `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from a checkpoint folder."""
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(
                f"{tok_file} not found. Point at a Hugging Face checkpoint folder that holds tokenizer.json "
                "(download it with `huggingface-cli download <repo> tokenizer.json tokenizer_config.json`)."
            )
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the Rust side raises plain Exception for any parse failure
            head = tok_file.read_bytes()[:64]
            hint = " It is a Git LFS pointer: run `git lfs pull`." if head.startswith(b"version https://git-lfs") else ""
            raise ValueError(f"Could not parse {tok_file}: {e}.{hint} Re-download the file.") from e

        config_file = path / "tokenizer_config.json"
        config = _read_json(config_file, "Fix or re-download it.") if config_file.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            template = {t["name"]: t["template"] for t in template}
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():  # transformers >= 4.50 saves the template here; it takes precedence
            template = jinja_file.read_text(encoding="utf-8")
        return cls(
            tok,
            chat_template=template,
            add_bos_token=config.get("add_bos_token"),
            add_eos_token=config.get("add_eos_token"),
            **{name: _token_text(config.get(name)) for name in _SPECIAL_NAMES},
        )

    def _install_post_processor(self) -> None:
        # Same TemplateProcessing transformers builds, so BOS/EOS are added exactly where it adds them.
        single = "$A:0"
        special = []
        if self.add_bos_token:
            single = f"{self.bos_token}:0 {single}"
            special.append((self.bos_token, self.bos_token_id))
        if self.add_eos_token:
            single = f"{single} {self.eos_token}:0"
            special.append((self.eos_token, self.eos_token_id))
        pair = single + " " + single.replace("$A:0", "$B:1").replace(":0", ":1")
        self._tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    # -- ids <-> text -------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (`len(hf_tokenizer)`, not HF's `.vocab_size`)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of tokens marked special (skipped by `decode(skip_special_tokens=True)`), sorted."""
        ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        ids |= {i for i in (self.bos_token_id, self.eos_token_id, self.pad_token_id, self._id(self.unk_token))}
        ids.discard(None)
        return sorted(ids)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _SPECIAL_NAMES if getattr(self, name) is not None}

    # -- chat ---------------------------------------------------------------

    def get_chat_template(self, tools: list | None = None, name: str | None = None) -> str:
        """The template string to render: `name` from a dict of templates, else "tool_use" with tools, else "default"."""
        template = self.chat_template
        if isinstance(template, dict):
            if name is None:
                name = "tool_use" if tools is not None and "tool_use" in template else "default"
            if name not in template:
                raise ValueError(f"No chat template named {name!r}; available: {sorted(template)}.")
            return template[name]
        if template is None:
            raise ValueError(
                "This tokenizer has no chat template: tokenizer_config.json has no `chat_template` and there is "
                "no chat_template.jinja. Use a chat/instruct checkpoint or set `tokenizer.chat_template`."
            )
        return template

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render OpenAI-shaped `messages` (and `tools`) into a prompt string, or its ids with `tokenize`.

        `enable_thinking=None` leaves the variable undefined so the template's own default applies.
        Extra `kwargs` become template variables (they override the special tokens).
        """
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        text = render_chat_template(
            self.get_chat_template(tools),
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text
