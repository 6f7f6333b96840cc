"""int8 KV cache: per-token-head quantization, every read path (SDPA gathers, prefill pieces, the decode
kernel) against the same keys dequantized, whole-model logits against transformers, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.engine.kv_cache import PagedKVCache, bytes_per_token
from qwen3lab.model import AttentionMetadata

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=4096)


def test_int8_pool_rounds_within_half_a_step_and_halves_the_bytes():
    cfg = SimpleNamespace(num_key_value_heads=4, head_dim=128, num_hidden_layers=2)
    int8 = PagedKVCache(cfg, 8, 16, torch.bfloat16, kv_cache_dtype="int8")
    bf16 = PagedKVCache(cfg, 8, 16, torch.bfloat16)
    torch.manual_seed(0)
    k, v = torch.randn(128, 4, 128), torch.randn(128, 4, 128)
    k[3, 1, 7] = 40.0  # an outlier only widens its own token-head's step
    int8.write(1, torch.arange(128), k, v)
    kg, vg = int8.gather(1, torch.arange(128).view(2, 64))
    assert kg.dtype == torch.bfloat16 and kg.shape == (2, 64, 4, 128)
    step = k.abs().amax(-1, keepdim=True) / 127
    err = (kg.reshape(128, 4, 128).float() - k).abs()
    assert (err <= step / 2 + k.abs() / 128).all()  # half a step, plus the bf16 rounding of the result
    assert err[4].max() < 0.03 and err[3, 1].max() > 0.05
    assert int8.nbytes / bf16.nbytes == pytest.approx((128 + 4) / 256)
    assert bytes_per_token(cfg, torch.bfloat16, "int8") * 128 == int8.nbytes


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return save_reference(tmp_path_factory.mktemp("kvq"), "qwen3", vocab_size=4096, num_hidden_layers=3, **SMALL)


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [1, 16, 40])
def test_int8_kv_logits_follow_transformers(reference, chunk):
    """Scoring through an int8 cache (decode rows, verification-sized rows, prefill chunks that read earlier
    chunks from the cache) stays within int8 rounding of transformers, and really reads int8: the error
    is far above float32's."""
    folder, ref = reference
    ids = torch.randint(0, 4096, (120,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = ref(torch.tensor([ids])).logits[0]
    got = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, kv_cache_dtype="int8").logits(ids, chunk=chunk)
    plain = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05).logits(ids, chunk=chunk)
    scale = expected.abs().max().item()
    assert (plain - expected).abs().max().item() < 1e-4
    err = (got - expected).abs().max().item()
    assert 1e-4 < err < 2e-2 * scale
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("kv", ["auto", "int8"])
def test_decode_kernel_reads_int8_as_sdpa_reads_it_dequantized(kv):
    """bf16 decode rows of a hybrid layer through the kernel (int8 read in place) against SDPA over the
    gathered, dequantized keys with the metadata's masks."""
    from qwen3lab import kernels
    from qwen3lab.model.attention_backend import CpuDecodeAttention, SdpaAttention

    if not kernels.usable(torch.zeros(1, 64, dtype=torch.bfloat16), 64, max_rows=None):
        pytest.skip("the CPU kernels need AVX-512 BF16")
    torch.manual_seed(4)
    H, KV, d, bs = 8, 2, 64, 4
    cache = PagedKVCache(SimpleNamespace(num_key_value_heads=KV, head_dim=d, num_hidden_layers=1), 64, bs,
                         torch.bfloat16, kv_cache_dtype=kv)
    cache.write(0, torch.arange(256), torch.randn(256, KV, d) * 2, torch.randn(256, KV, d))
    tables = [list(range(0, 20)), list(range(20, 40))]
    for layer_type in ("full_attention", "sliding_attention"):
        meta = AttentionMetadata.build([1, 1], [51, 30], (layer_type,), 12, tables, bs, sink_tokens=3)
        q = torch.randn(2, H, d).bfloat16()
        layer = SimpleNamespace(num_heads=H, num_kv_heads=KV, head_dim=d, layer_idx=0, layer_type=layer_type,
                                scaling=d ** -0.5, sliding_window=12 if layer_type == "sliding_attention" else 0)
        fast = CpuDecodeAttention().forward(layer, q, None, None, meta, cache)
        ref = SdpaAttention().forward(layer, q, None, None, meta, cache)
        torch.testing.assert_close(fast.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_int8_kv_generation_with_prefix_caching_and_bad_dtype(reference):
    folder, _ = reference
    llm = LLM(str(folder), dtype="bfloat16", kv_cache_memory_gb=0.05, kv_cache_dtype="int8",
              max_num_batched_tokens=32)
    assert llm.engine.cache.quantized
    ids = torch.randint(0, 4096, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    first = llm.generate([ids], greedy)[0].outputs[0].token_ids
    again = llm.generate([ids], greedy)[0].outputs[0].token_ids  # prefix-cache hit on int8 blocks
    assert first == again and len(first) == 8
    with pytest.raises(ValueError, match="kv_cache_dtype 'fp8'.*int8"):
        LLM(str(folder), kv_cache_dtype="fp8")
