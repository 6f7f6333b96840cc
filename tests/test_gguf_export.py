"""GGUF export: a random Qwen3 checkpoint written as F32/F16/BF16/Q8_0/Q4_0 GGUF and loaded back by our
own loader; tokenizer and chat template round trips; GGUF -> safetensors; llama Q/K permutation;
and, when llama-cpp-python is installed, llama.cpp itself loading our files.

Tolerances are on logits of a model whose logits have std ~0.33 and max |logit| ~1.7:
- F32: exact (the same float32 numbers go out and come back).
- F16: 1e-2. 11-bit mantissa: each weight moves by <= 2^-12 relative; two layers keep it ~1e-3.
- BF16: 5e-2. 8-bit mantissa: 2^-9 relative per weight, ~10x F16's error (measured ~0.02).
- Q8_0: 0.15. int8 with one f16 scale per 32 weights: ~0.4% error per weight (measured ~0.05).
- Q4_0: 4-bit codes are a coarse model (measured ~0.8), so the logits check is loose
  (1.5, plus a mean cosine similarity > 0.9 per position); exactness is checked on the
  weights instead: what we load equals gguf's own quantize -> dequantize of the original.
"""

import importlib.util
import json
import unicodedata

import gguf
import numpy as np
from pathlib import Path

import pytest
import torch
from checkpoints import save_reference
from test_gguf import CORPUS, converter_permute

from qwen3lab import LLM
from qwen3lab.cli.main import main as cli_main
from qwen3lab.weights.gguf_export import export_gguf, tensor_type
from qwen3lab.weights.gguf_loader import open_gguf, read_metadata
from qwen3lab.weights.safetensors_export import export_safetensors

# Narrow (the 151936-row embedding dominates every export and load), rows still a multiple of Q4_0's 32.
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             num_hidden_layers=2, max_position_embeddings=4096)
TOLERANCE = {"f32": 0.0, "f16": 1e-2, "bf16": 5e-2, "q8_0": 0.15, "q4_0": 1.5}
PROMPT = "The capital of France is Paris. 12345 + 678 = ?\n<think>\nok</think> 中文 🚀"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi /no_think"},
            {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"}, {"role": "user", "content": "2+2?"}]


def small_llm(path) -> LLM:
    return LLM(str(path), dtype="float32", kv_cache_memory_gb=0.01)


@pytest.fixture(scope="module")
def qwen3(scratch):
    folder, _ = save_reference(scratch("qwen3") / "ref", "qwen3", tie_word_embeddings=False,
                               generation={"eos_token_id": [151645, 151643], "temperature": 0.6, "top_k": 20},
                               **SMALL)
    llm = small_llm(folder)
    ids = llm.tokenizer.encode(PROMPT)
    return folder, llm, ids, llm.logits(ids)


@pytest.fixture(scope="module")
def exported(qwen3, scratch):
    """outtype -> path of the Qwen3 reference exported as GGUF (written on first use)."""
    folder = qwen3[0]
    out, cache = scratch("gguf"), {}

    def get(outtype):
        if outtype not in cache:
            cache[outtype] = export_gguf(folder, out / f"qwen3-{outtype}.gguf", outtype)
        return cache[outtype]

    return get


@pytest.fixture(scope="module")
def loaded(exported):
    """outtype -> our LLM on the exported file (loaded on first use; loading dequantises, which is slow)."""
    cache = {}

    def get(outtype):
        if outtype not in cache:
            cache[outtype] = small_llm(exported(outtype))
        return cache[outtype]

    return get


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_qwen3_export_logits(qwen3, loaded, outtype):
    _, ref, ids, ref_logits = qwen3
    llm = loaded(outtype)
    assert llm.config.model_type == "qwen3" and llm.config.qk_norm and not llm.config.tie_word_embeddings
    logits = llm.logits(ids)
    diff = (logits - ref_logits).abs().max().item()
    print(f"{outtype}: max |logit difference| {diff:.4f}")
    assert diff <= TOLERANCE[outtype], f"{outtype}: max logit difference {diff}"
    if outtype == "q4_0":
        cos = torch.nn.functional.cosine_similarity(logits, ref_logits, dim=-1)
        assert cos.mean() > 0.9, cos  # measured ~0.95: the logits still point the same way


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "bf16"])
def test_quantised_weights_are_gguf_quantize(qwen3, exported, outtype):
    """The stored blocks are exactly gguf.quants.quantize of the original weights, types as planned."""
    from safetensors.torch import load_file

    ref = load_file(Path(qwen3[0]) / "model.safetensors")  # the checkpoint's own (unfused) tensors
    reader = open_gguf(exported(outtype))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_q_norm.weight"] == gguf.GGMLQuantizationType.F32
    main = {"q8_0": "Q8_0", "q4_0": "Q4_0", "bf16": "BF16"}[outtype]
    assert types["blk.1.ffn_down.weight"].name == main
    assert types["output.weight"].name == ("Q8_0" if outtype == "q4_0" else main)  # llama-quantize: Q6_K
    assert types["token_embd.weight"].name == main
    for t in reader.tensors:
        if t.name in ("blk.1.attn_q.weight", "token_embd.weight"):
            hf = "model.layers.1.self_attn.q_proj.weight" if t.name.startswith("blk") else "model.embed_tokens.weight"
            want = gguf.quants.quantize(ref[hf].numpy(), t.tensor_type)
            assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), t.name


def test_tensor_type_rules():
    q = gguf.GGMLQuantizationType
    assert tensor_type("output_norm.weight", (128,), "q4_0", False) == q.F32
    assert tensor_type("blk.0.attn_q.bias", (128,), "bf16", False) == q.F32
    assert tensor_type("token_embd.weight", (10, 128), "q4_0", True) == q.Q8_0  # tied: it is the output
    assert tensor_type("token_embd.weight", (10, 128), "q4_0", False) == q.Q4_0
    assert tensor_type("blk.0.ffn_down.weight", (128, 100), "q8_0", False) == q.F16  # 100 % 32: F16 fallback


def test_metadata_keys_llama_cpp_reads(qwen3, exported):
    meta = read_metadata(open_gguf(exported("q8_0")))
    expect = {
        "general.architecture": "qwen3", "general.file_type": 7, "qwen3.context_length": 4096,
        "qwen3.embedding_length": 64, "qwen3.block_count": 2, "qwen3.feed_forward_length": 128,
        "qwen3.attention.head_count": 4, "qwen3.attention.head_count_kv": 2, "qwen3.attention.key_length": 16,
        "qwen3.attention.value_length": 16, "qwen3.rope.freq_base": 1e6, "qwen3.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.eos_token_id": 151645,
        "tokenizer.ggml.bos_token_id": 151643, "tokenizer.ggml.padding_token_id": 151643,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: meta.get(k) for k in expect} == expect
    assert len(meta["tokenizer.ggml.tokens"]) == 151936 and len(meta["tokenizer.ggml.merges"]) == 151387
    types = meta["tokenizer.ggml.token_type"]
    assert types[151644] == 3 and types[151667] == 4 and types[151700] == 5  # CONTROL, USER_DEFINED, UNUSED


def test_tokenizer_and_template_round_trip(qwen3, loaded):
    ref = qwen3[1].tokenizer
    tok = loaded("q4_0").tokenizer
    for text in CORPUS:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(ref.encode(text)) == ref.decode(ref.encode(text))
    assert tok.chat_template == ref.chat_template
    for thinking in (None, False):
        assert tok.apply_chat_template(MESSAGES, enable_thinking=thinking) == ref.apply_chat_template(
            MESSAGES, enable_thinking=thinking)


def test_gguf_to_safetensors_round_trip(qwen3, exported, loaded, tmp_path):
    gguf_path = exported("q8_0")
    via_gguf = loaded("q8_0")
    ids = qwen3[2]
    folder = export_safetensors(gguf_path, tmp_path / "hf", "f32")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json", "generation_config.json"}
    back = small_llm(folder)
    assert torch.equal(back.logits(ids), via_gguf.logits(ids))  # f32 holds the dequantised values exactly
    for text in CORPUS:
        assert back.tokenizer.encode(text) == qwen3[1].tokenizer.encode(text), text
    assert back.tokenizer.chat_template == qwen3[1].tokenizer.chat_template
    assert back.generation_defaults.eos_token_ids == (151645,)
    # and once more to GGUF: the tokenizer metadata is carried over unchanged
    again = export_gguf(folder, tmp_path / "again.gguf", "f32")
    a, b = read_metadata(open_gguf(gguf_path)), read_metadata(open_gguf(again))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre"):
        assert a[key] == b[key], key
    assert torch.equal(small_llm(again).logits(ids), via_gguf.logits(ids))


def test_safetensors_sharding_and_transformers(qwen3, tmp_path):
    folder = export_safetensors(qwen3[0], tmp_path / "sharded", "bf16", max_shard_bytes=8 << 20)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ref_bf16 = LLM(str(qwen3[0]), dtype="bfloat16", kv_cache_memory_gb=0.01)
    assert torch.equal(LLM(str(folder), dtype="bfloat16", kv_cache_memory_gb=0.01).logits(qwen3[2]),
                       ref_bf16.logits(qwen3[2]))
    with pytest.raises(ValueError, match="q4_0"):
        export_safetensors(qwen3[0], tmp_path / "bad", "q4_0")


def test_llama_export_permutes_qk(tmp_path):
    folder, ref = save_reference(tmp_path / "llama", "llama", tie_word_embeddings=True, **SMALL)
    path = export_gguf(folder, tmp_path / "llama.gguf", "f32")
    reader = open_gguf(path)
    meta = read_metadata(reader)
    assert meta["general.architecture"] == "llama" and meta["llama.rope.dimension_count"] == 16
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    state = ref.state_dict()
    assert "output.weight" not in stored  # tied
    q = state["model.layers.0.self_attn.q_proj.weight"].numpy()
    k = state["model.layers.1.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(stored["blk.0.attn_q.weight"], converter_permute(q, 4))
    assert np.array_equal(stored["blk.1.attn_k.weight"], converter_permute(k, 2))
    ids = list(range(100, 140))
    assert torch.equal(small_llm(path).logits(ids), small_llm(folder).logits(ids))


def test_sliding_window_refused(tmp_path):
    folder, _ = save_reference(tmp_path / "swa", "qwen2", use_sliding_window=True, sliding_window=8,
                               max_window_layers=1, vocab_size=1000, **SMALL)
    with pytest.raises(ValueError, match="sliding-window"):
        export_gguf(folder, tmp_path / "x.gguf")


def test_cli_convert(qwen3, tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert cli_main(["convert", "--model", str(qwen3[0]), "--out", str(out), "--outtype", "f32"]) == 0
    assert torch.equal(small_llm(out).logits(qwen3[2]), qwen3[3])
    assert cli_main(["convert", "--model", str(out), "--out", str(tmp_path / "hf"), "--outtype", "q8_0"]) == 2
    assert "q8_0" in capsys.readouterr().err


# --- llama.cpp itself -------------------------------------------------------------------------------

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install -e '.[bench]' builds it from source, ~4 minutes)")


@needs_llama_cpp
@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_llama_cpp_matches_engine(qwen3, exported, loaded, outtype):
    """llama.cpp on our file computes our engine's logits on the same (dequantised) weights.

    Tolerance 0.05 (logit std ~0.33; measured 0.007 for bf16, 0.025 for q8_0): ggml's CPU kernels round
    the activations to the weights' vec-dot type (bf16 for BF16 weights, int8 blocks for Q8_0) before
    each matmul, while our engine keeps them in float32.
    """
    from llama_cpp import Llama

    path = exported(outtype)
    ours = loaded(outtype)
    ids = qwen3[2]
    lcpp = Llama(str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False)
    assert lcpp.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids
    for text in CORPUS:
        # llama.cpp does not NFC-normalise (Qwen's tokenizer.json does), so only NFC text can agree.
        if text.strip() and unicodedata.normalize("NFC", text) == text:
            assert lcpp.tokenize(text.encode(), add_bos=False, special=True) == ours.tokenizer.encode(text), text
    lcpp.eval(ids)
    theirs = torch.from_numpy(np.asarray(lcpp.scores[: len(ids)], dtype=np.float32))
    diff = (theirs - ours.logits(ids)).abs().max().item()
    print(f"llama.cpp {outtype}: max |logit difference| {diff:.4f}")
    assert diff < 0.05, diff
    # Random weights give near-ties among 151936 logits, so an argmax may flip on a rare position.
    assert (theirs.argmax(-1) == ours.logits(ids).argmax(-1)).float().mean() >= 0.9
