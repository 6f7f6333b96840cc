"""Weight-only int8 / int4 quantization: kernels against dequantized references, the module swap on
a tiny random Qwen3 (tied head), quantized checkpoints round-tripping exactly, and clear errors.

The references are this package's own dequantization (``dequantize_int8`` / ``dequantize_int4``),
which are checked against the float weights with the rounding bound of each scheme.
"""

import json

import pytest
import torch
from torch import nn

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams, kernels
from qwen3lab.cli import main
from qwen3lab.model.linear import FloatLinear, Linear
from qwen3lab.quant import GROUP_SIZES, Int4Method, Int8Method, quantize_model
from qwen3lab.quant.apply import quantize_linear
from qwen3lab.quant.apply import ensure_quantized
from qwen3lab.quant.int4 import (Int4Amx, Int4Avx512, Int4CpuPacked, Int4Portable, dequantize_int4, pack_nibbles,
                                 quantize_int4, unpack_nibbles)
from qwen3lab.quant.int8 import dequantize_int8
from qwen3lab.weights.file_rows import FileRowsEmbedding
from qwen3lab.weights.loader import load_checkpoint

TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, max_position_embeddings=512)
PROMPT = [9707, 11, 1879, 374, 264, 1273, 315, 279, 4128]  # ids below the tiny vocabulary


@pytest.fixture(scope="module")
def folder(scratch):
    path, _ = save_reference(scratch("quant") / "tiny", "qwen3", vocab_size=10240, **TINY)
    return path


def _linear(k, n, dtype, bias=False, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
    return lin.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_dequantized_reference(dtype, bias):
    lin = _linear(256, 96, dtype, bias)
    q = quantize_linear(lin, "int8")
    ref_w = dequantize_int8(q.weight, q.weight_scale)
    # Symmetric rounding: every weight within half a step of its channel's scale.
    assert ((ref_w - lin.weight.float()).abs() <= q.weight_scale.float()[:, None] * 0.5 + 1e-6).all()
    for rows in (5, 80):  # the int8 kernel (decode) and the dequantized GEMM (prefill-sized inputs)
        x = torch.randn(2, rows, 256).to(dtype)
        ref = x.float() @ ref_w.t() + (lin.bias.float() if bias else 0)
        out = q(x)
        assert out.shape == (2, rows, 96) and out.dtype == dtype
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=0)


def test_nibble_layout_is_low_then_high():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_nibbles(q).tolist() == [[0x21, 0x0F]]
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_matches_dequantized_reference(group_size, dtype):
    lin = _linear(512, 64, dtype, bias=True, seed=group_size)
    portable = quantize_linear(lin, "int4", group_size, method=Int4Portable(group_size, from_float=True))
    q = portable
    ref_w = dequantize_int4(q.weight, q.scales_and_zeros, group_size)
    step = q.scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    assert ((ref_w - lin.weight.float()).abs() <= step * 0.5 + 2e-3).all()  # + rounding of the stored zero
    x = torch.randn(7, 512).to(dtype)
    ref = x.float() @ ref_w.t() + lin.bias.float()
    fallback = q(x)  # the dequantize path used off the CPU
    q = quantize_linear(lin, "int4", group_size)  # the layout this machine runs best
    if dtype == torch.bfloat16 and kernels.amx():  # the AMX kernel's tile layout replaces the nibbles
        assert isinstance(q.method, Int4Amx) and q.weight.numel() == 0 and q.scales_and_zeros.numel() == 0
    elif dtype == torch.bfloat16 and kernels.compiled() is not None:  # qwen3lab's kernel reads the nibbles
        assert isinstance(q.method, Int4Avx512) and not hasattr(q, "cpu_packed") and q.scales_and_zeros.numel() == 0
    else:  # PyTorch's kernel, on its own packed layout
        assert isinstance(q.method, Int4CpuPacked) and q.cpu_packed is not None and q.weight.numel() == 0
    out = q(x)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, atol=tol * ref.abs().max().item(), rtol=0)
    torch.testing.assert_close(fallback.float(), ref, atol=tol * ref.abs().max().item(), rtol=0)


def test_int4_quantize_is_exact_on_its_own_grid():
    # Weights already on a 16-level grid per group come back exactly (scale and zero are exact in fp32).
    q = torch.randint(0, 16, (16, 64), dtype=torch.uint8)
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, 15, 0, 15  # each group spans the full range
    w = (q.float() - 3) * 0.125
    q2, sz = quantize_int4(w, 32, torch.float32)
    torch.testing.assert_close(dequantize_int4(pack_nibbles(q2), sz, 32), w, atol=0, rtol=0)


@pytest.mark.parametrize("mode,group", [("int8", None), ("int4", 32)])
def test_tied_model_quantizes_a_head_copy(folder, mode, group):
    ckpt = load_checkpoint(folder, torch.bfloat16)
    model = ckpt.model
    embed = model.model.embed_tokens.weight.detach().clone()
    float_logits = _logits(model)
    quantize_model(model, mode, group)
    kinds = {type(m) for n, m in model.named_modules() if n.endswith(("_proj", "lm_head"))}
    assert kinds == {Linear}
    want = Int8Method if mode == "int8" else Int4Method
    assert all(isinstance(m.method, want) for n, m in model.named_modules() if n.endswith(("_proj", "lm_head")))
    assert not any(isinstance(m, nn.Linear) or isinstance(getattr(m, "method", None), FloatLinear)
                   for m in model.modules())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(model.model.embed_tokens.weight, embed)  # lookups unchanged
    assert model.quantization["tied_head_copied"]
    logits = _logits(model)
    cos = torch.nn.functional.cosine_similarity(logits, float_logits, dim=-1)
    assert cos.min() > (0.995 if mode == "int8" else 0.95)


def _logits(model):
    from qwen3lab.model import AttentionMetadata

    n = len(PROMPT)
    meta = AttentionMetadata.build([n], [n], model.config.layer_types, model.config.sliding_window)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(PROMPT), meta))


@pytest.mark.parametrize("mode,group", [("int8", None), ("int4", 64)])
def test_saved_checkpoint_reloads_identically(folder, tmp_path, mode, group):
    params = SamplingParams(max_tokens=12, temperature=0.0)
    mem = LLM(folder, dtype="bfloat16", kv_cache_memory_gb=0.05, quantization=mode, quantization_group_size=group)
    argv = ["quantize", "--model", str(folder), "--out", str(tmp_path / "q"), "--mode", mode, "--dtype", "bfloat16"]
    assert main(argv + (["--group-size", str(group)] if group else [])) == 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "qwen3lab", "mode": mode, "group_size": group,
                                          "modules_to_not_convert": []}
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "bfloat16"
    disk = LLM(tmp_path / "q", kv_cache_memory_gb=0.05)  # dtype "auto" follows the written torch_dtype
    assert disk.dtype == torch.bfloat16 and disk.model.quantization["mode"] == mode
    assert torch.equal(disk.logits(PROMPT), mem.logits(PROMPT))
    # The bf16 embedding of the saved checkpoint is read row by row from the file (not its memory map).
    emb = disk.model.model.embed_tokens
    assert isinstance(emb, FileRowsEmbedding) and emb.path.endswith("model.safetensors")
    ids = torch.tensor([[0, 10239, 5], [PROMPT[0], PROMPT[1], 0]])
    with torch.inference_mode():
        assert torch.equal(emb(ids), torch.nn.functional.embedding(ids, emb.weight))
        with pytest.raises(IndexError, match="outside the embedding table"):
            emb(torch.tensor([10240]))
    assert not isinstance(mem.model.model.embed_tokens, FileRowsEmbedding)  # converted in memory: no file
    a, b = disk.generate([PROMPT], params)[0], mem.generate([PROMPT], params)[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
    # Asking for the quantization it already has is fine (what LLM(quantization=) does); another is an error.
    assert ensure_quantized(disk.model, mode, group) is disk.model
    with pytest.raises(ValueError, match="already quantized"):
        ensure_quantized(disk.model, "int8" if mode == "int4" else "int4")


def test_skip_keeps_layers_in_float(folder, tmp_path):
    ckpt = load_checkpoint(folder, torch.float32)
    quantize_model(ckpt.model, "int8", skip=["lm_head", "*.down_proj"], keep_portable=True)
    assert ckpt.model.lm_head.weight is ckpt.model.model.embed_tokens.weight  # still tied
    assert isinstance(ckpt.model.model.layers[0].mlp.down_proj.method, FloatLinear)
    from qwen3lab.weights.quantized_export import save_quantized

    save_quantized(ckpt.model, tmp_path / "q", folder)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    assert cfg["quantization_config"]["modules_to_not_convert"] == [
        "lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    reloaded = load_checkpoint(tmp_path / "q", torch.float32).model
    assert torch.equal(_logits(reloaded), _logits(ckpt.model))


def test_clear_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="mode 'int3' is not supported"):
        LLM(folder, quantization="int3")
    with pytest.raises(ValueError, match="group size 48 is not supported"):
        LLM(folder, quantization="int4", quantization_group_size=48)
    with pytest.raises(ValueError, match="takes no group size"):
        LLM(folder, quantization="int8", quantization_group_size=64)
    model = load_checkpoint(folder, torch.float32).model
    # hidden_size 128 is not a multiple of 256: the first such layer is named and nothing is swapped.
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj' has 128 input features"):
        quantize_model(model, "int4", 256)
    assert not any(isinstance(getattr(m, "method", None), (Int4Method, Int8Method)) for m in model.modules())
    with pytest.raises(ValueError, match="is not quantized"):
        from qwen3lab.weights.quantized_export import save_quantized

        save_quantized(model, tmp_path / "x", folder)
    quantize_model(model, "int4", 32)
    with pytest.raises(ValueError, match="keep_portable=True"):
        save_quantized(model, tmp_path / "x", folder)
    # A checkpoint quantized by another tool is named, not half-loaded.
    bad = tmp_path / "awq"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quant_method 'awq' is not supported"):
        load_checkpoint(bad)


@pytest.mark.slow  # two loads of the real GGUF: about a minute
def test_default_gguf_quantized_and_saved(tmp_path):
    """The embedded SmolLM2 GGUF (Q4_1: blocks of 32) quantized to int4/g32 in memory and via a folder."""
    from qwen3lab.weights.default_model import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(f"the SmolLM2 GGUF cannot be fetched here: {e}")
    mem = LLM(None, dtype="bfloat16", kv_cache_memory_gb=0.05, quantization="int4", quantization_group_size=32)
    assert main(["quantize", "--out", str(tmp_path / "q"), "--mode", "int4", "--group-size", "32"]) == 0
    disk = LLM(tmp_path / "q", kv_cache_memory_gb=0.05)  # config, tokenizer and template from the GGUF
    ids = mem.tokenizer.encode("The capital of France is")
    assert disk.tokenizer.encode("The capital of France is") == ids
    assert torch.equal(disk.logits(ids), mem.logits(ids))
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    params = SamplingParams(max_tokens=16, temperature=0.0)
    a, b = disk.chat(chat, sampling=params), mem.chat(chat, sampling=params)
    assert a.token_ids == b.token_ids and a.text.strip(), (a.text, b.text)
