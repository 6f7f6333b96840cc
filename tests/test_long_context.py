"""Long context: chunked prefill read from the paged cache in place, run-time hybrid attention (sliding
window, sink tokens, full-attention decode), and their bad inputs."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams, hybrid_attention
from qwen3lab.engine.kv_cache import KVLayer, PagedKVCache
from qwen3lab.model import AttentionMetadata
from qwen3lab.model import prefill_attention
from qwen3lab.model.prefill_attention import prefill_row

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=4096)


def _reference(q, k, v, ctx, window, sinks, scale):
    """Every query against all its keys with one explicit mask: q [T, H, d], k/v [ctx, KV, d]."""
    T = q.shape[0]
    qpos = torch.arange(ctx - T, ctx).unsqueeze(1)
    kpos = torch.arange(ctx).unsqueeze(0)
    visible = kpos <= qpos
    if window:
        visible &= (kpos > qpos - window) | (kpos < sinks)
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=visible, scale=scale,
        enable_gqa=True).transpose(0, 1)


@pytest.mark.parametrize("window,sinks", [(0, 0), (40, 0), (40, 4), (7, 3), (300, 10)])
@pytest.mark.parametrize("fragmented", [False, True])
@pytest.mark.parametrize("sub", [16, 256])
def test_prefill_pieces_equal_one_masked_pass(window, sinks, fragmented, sub, monkeypatch):
    monkeypatch.setattr(prefill_attention, "MIN_RUN", 16)
    monkeypatch.setattr(prefill_attention, "SUB", sub)  # 16: sliding chunks in pieces of 16 queries
    torch.manual_seed(window + sinks)
    H, KV, d, T, ctx = 8, 2, 64, 48, 230
    slots_total = 400
    # Consecutive runs of slots with holes and jumps, as a reused block pool hands them out.
    order = torch.randperm(slots_total // 8) if fragmented else torch.arange(slots_total // 8)
    slots = (order.unsqueeze(1) * 8 + torch.arange(8)).flatten()[:ctx]
    if not fragmented:
        slots = torch.cat([slots[:100], slots[100:] + 80])  # one jump: two long runs
    kc, vc = torch.randn(slots_total + 100, KV, d), torch.randn(slots_total + 100, KV, d)
    q = torch.randn(T, H, d)
    k, v = kc[slots], vc[slots]
    out = prefill_row(q, k[ctx - T:], v[ctx - T:], KVLayer(kc, vc), slots, ctx, d ** -0.5, window, sinks)
    ref = _reference(q, k, v, ctx, window, sinks, d ** -0.5)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def sliding(tmp_path_factory):
    folder, ref = save_reference(tmp_path_factory.mktemp("sliding"), "qwen3", vocab_size=4096, num_hidden_layers=4,
                                 use_sliding_window=True, sliding_window=24, max_window_layers=2, **SMALL)
    yield folder, ref
    del ref
    gc.collect()


def _chunked_logits(llm, ids, chunks, bs=4, shuffle=True):
    model, cfg = llm.model, llm.config
    cache = PagedKVCache(cfg, num_blocks=96, block_size=bs, dtype=torch.float32)
    n = len(ids)
    blocks = list(range(96))
    if shuffle:  # out-of-order blocks, with runs: pairs of consecutive blocks in reverse order
        blocks = [b for pair in zip(blocks[1::2], blocks[::2]) for b in pair][::-1]
    table = blocks[: -(-n // bs)]
    out, done = [], 0
    for m in chunks:
        meta = AttentionMetadata.build([m], [done + m], cfg.layer_types, cfg.sliding_window, [table], bs,
                                       sink_tokens=cfg.sink_tokens)
        out.append(model.compute_logits(model(torch.tensor(ids[done: done + m]), meta, cache)))
        done += m
    return torch.cat(out)


@torch.inference_mode()
@pytest.mark.parametrize("chunks", [[120], [17, 40, 63], [30, 30, 30, 30]])
def test_sliding_checkpoint_chunked_prefill_equals_transformers(sliding, chunks, monkeypatch):
    """Chunks longer than the decode kernel's rows go through the in-place path; they cross the window."""
    monkeypatch.setattr(prefill_attention, "MIN_RUN", 8)
    folder, ref = sliding
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05)
    ids = torch.randint(0, 4096, (120,), generator=torch.Generator().manual_seed(5)).tolist()
    expected = ref(torch.tensor([ids])).logits[0]
    got = _chunked_logits(llm, ids, chunks)
    assert (got - expected).abs().max().item() < 1e-4


@torch.inference_mode()
def test_run_time_hybrid_equals_a_checkpoint_declaring_it(sliding, tmp_path):
    """attention={...} at load gives what a checkpoint with the same layer_types gives in transformers;
    greedy generation with prefix caching and chunking matches plain decoding through transformers."""
    folder, _ = sliding
    types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    other, ref = save_reference(tmp_path / "declared", "qwen3", vocab_size=4096, num_hidden_layers=4,
                                use_sliding_window=True, sliding_window=16, layer_types=types, **SMALL)
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, max_num_batched_tokens=40,
              attention={"sliding_window": 16, "full_layers": [0, 3]})
    declared = LLM(str(other), dtype="float32", kv_cache_memory_gb=0.05)
    # Same weights (both random inits use seed 0): only the layer types differ.
    assert llm.config.layer_types == declared.config.layer_types == tuple(types)
    ids = torch.randint(0, 4096, (90,), generator=torch.Generator().manual_seed(6)).tolist()
    expected = ref(torch.tensor([ids])).logits[0]
    assert (_chunked_logits(declared, ids, [45, 45]) - expected).abs().max().item() < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(llm.model.state_dict().values(), declared.model.state_dict().values()))
    assert (_chunked_logits(llm, ids, [20, 70]) - expected).abs().max().item() < 1e-4
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    base = declared.generate([ids[:70]], greedy)[0].outputs[0].token_ids
    with torch.no_grad():  # transformers' greedy decode on the full sequence each step
        seq = list(ids[:70])
        for _ in range(12):
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
    assert base == seq[70:]
    # The same prompt again hits the prefix cache; a longer one shares its first blocks.
    assert declared.generate([ids[:70]], greedy)[0].outputs[0].token_ids == base
    longer = declared.generate([ids[:70] + ids[70:85]], greedy)[0].outputs[0].token_ids
    with torch.no_grad():
        seq = list(ids[:85])
        for _ in range(12):
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
    assert longer == seq[85:]


def _masked_ref(ref, ids, window, sinks, full_layers, prompt_len):
    """transformers with each sliding layer's mask replaced by SWAA's: the window, the kept-first tokens and,
    past ``prompt_len`` (None: never), full attention."""
    n = len(ids)
    q, k = torch.arange(n).unsqueeze(1), torch.arange(n).unsqueeze(0)
    visible = (k <= q) & ((k > q - window) | (k < sinks))
    if prompt_len is not None:
        visible |= (k <= q) & (q >= prompt_len)
    full = torch.zeros(n, n).masked_fill(k > q, float("-inf"))
    slide = torch.zeros(n, n).masked_fill(~visible, float("-inf"))
    layers = ref.model.layers
    saved = [layer.self_attn.forward for layer in layers]

    def patch(i, layer):
        orig = saved[i]

        def forward(hidden_states, position_embeddings=None, attention_mask=None, **kw):
            mask = (full if i in full_layers else slide)[None, None]
            kw.pop("sliding_window", None)
            return orig(hidden_states, position_embeddings=position_embeddings, attention_mask=mask, **kw)
        layer.self_attn.forward = forward

    for i, layer in enumerate(layers):
        layer.self_attn.config._attn_implementation = "eager"
        layer.self_attn.sliding_window = None
        patch(i, layer)
    try:
        return ref(torch.tensor([ids])).logits[0]
    finally:
        for layer, f in zip(layers, saved):
            layer.self_attn.forward = f


@torch.inference_mode()
@pytest.mark.parametrize("fa_decode", [False, True])
def test_sink_tokens_and_full_attention_decode(tmp_path, fa_decode):
    """SWAA's keep_first and force_fa_decode against transformers with the same masks, chunked prefill
    then decodes through the engine."""
    folder, ref = save_reference(tmp_path / "m", "qwen3", vocab_size=4096, num_hidden_layers=3, **SMALL)
    spec = {"sliding_window": 12, "full_layers": [1], "sink_tokens": 3, "full_attention_decode": fa_decode}
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, max_num_batched_tokens=32, attention=spec)
    ids = torch.randint(0, 4096, (60,), generator=torch.Generator().manual_seed(7)).tolist()
    out = llm.generate([ids], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0].outputs[0].token_ids
    seq = list(ids)
    for _ in range(10):
        logits = _masked_ref(ref, seq, 12, 3, {1}, 60 if fa_decode else None)
        seq.append(int(logits[-1].argmax()))
    assert out == seq[60:]
    # Prompt logits through the in-place chunked path equal the masked reference.
    got = _chunked_logits(llm, ids, [25, 35])
    assert (got - _masked_ref(ref, ids, 12, 3, {1}, None)).abs().max().item() < 1e-4


def test_bad_attention_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'window'"):
        hybrid_attention.parse('{"window": 8}')
    with pytest.raises(ValueError, match="'sliding_window' must be a positive integer"):
        hybrid_attention.parse({"full_layers": [1]})
    folder, _ = save_reference(tmp_path / "m", "qwen3", vocab_size=512, num_hidden_layers=2, **SMALL)
    with pytest.raises(ValueError, match=r"full_layers \[5\] out of range; the model has layers 0\.\.1"):
        LLM(str(folder), dtype="float32", attention={"sliding_window": 8, "full_layers": [0, 5]})
    with pytest.raises(ValueError, match="sliding_window 9000 is larger than the context"):
        LLM(str(folder), dtype="float32", attention={"sliding_window": 9000})
    f = tmp_path / "layers.json"
    f.write_text(json.dumps({"attention": {"sliding_window": 8, "full_layers": [1]}, "ranking": [1, 0]}))
    assert hybrid_attention.parse(str(f))["full_layers"] == [1]
    with pytest.raises(ValueError, match="neither a JSON object nor a file"):
        hybrid_attention.parse(str(tmp_path / "nope.json"))


@pytest.mark.parametrize("fa_decode", [False, True])
def test_decode_kernel_rows_follow_the_hybrid_masks(fa_decode):
    """bf16 decode and verification rows through the paged decode kernel (window starts, sinks, generated
    tokens attending fully) against SDPA with the metadata's masks."""
    from types import SimpleNamespace

    from qwen3lab import kernels
    from qwen3lab.model.attention_backend import CpuDecodeAttention, SdpaAttention

    if not kernels.usable(torch.zeros(1, 64, dtype=torch.bfloat16), 64, max_rows=None):
        pytest.skip("the CPU kernels need AVX-512 BF16")
    torch.manual_seed(3)
    H, KV, d, bs = 8, 2, 64, 4
    cache = PagedKVCache(SimpleNamespace(num_key_value_heads=KV, head_dim=d, num_hidden_layers=1), 64, bs,
                         torch.bfloat16)
    cache.write(0, torch.arange(256), torch.randn(256, KV, d), torch.randn(256, KV, d))
    tables = [list(range(0, 20)), list(range(20, 40)), list(range(40, 60))]
    for T, ctx, prompt in ((1, [30, 51, 9], [29, 30, 5]), (3, [30, 51, 9], [30, 40, 8])):
        meta = AttentionMetadata.build([T] * 3, ctx, ("sliding_attention",), 12, tables, bs, sink_tokens=3,
                                       prompt_lens=prompt if fa_decode else None)
        q = torch.randn(3 * T, H, d).bfloat16()
        layer = SimpleNamespace(num_heads=H, num_kv_heads=KV, head_dim=d, layer_idx=0,
                                layer_type="sliding_attention", scaling=d ** -0.5, sliding_window=12)
        fast = CpuDecodeAttention().forward(layer, q, None, None, meta, cache)
        ref = SdpaAttention().forward(layer, q, None, None, meta, cache)
        torch.testing.assert_close(fast.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_select_layers_scores_equal_a_model_loaded_with_each_layout(tmp_path):
    """Each layer's NLL rise, measured by switching layouts in place through the scoring path, equals the
    one from a model loaded with that layout (attention=...) scored with LLM.logits."""
    from qwen3lab.cli import main
    from qwen3lab.select_layers import calibration_rows, evenly_spaced, select

    # The full vocabulary: the chat template's special tokens are part of every prompt.
    folder, _ = save_reference(tmp_path / "m", "qwen3", num_hidden_layers=3, **SMALL)
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, max_num_batched_tokens=64)
    g = torch.Generator().manual_seed(8)
    words = llm.tokenizer.decode(torch.randint(100, 4000, (70,), generator=g).tolist())
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"prompt": words[i * 7:] + " Which word came first?", "answer": words[:12]})
                            + "\n" for i in range(3)))
    rows = calibration_rows(str(data), 3, 0, None)
    result = select(llm, rows, 1, 10, 2)
    assert llm.config.layer_types == ("full_attention",) * 3  # the layout is restored

    def nll(model_llm):
        total = []
        for r in rows:  # the context's trailing newline is scored with the answer, as lm-eval splits pairs
            ctx = model_llm.tokenizer.encode(model_llm.render_chat(r["messages"], enable_thinking=False).rstrip(),
                                             add_special_tokens=False)
            ids = model_llm.tokenizer.encode(model_llm.render_chat(r["messages"], enable_thinking=False) + r["answer"],
                                             add_special_tokens=False)
            lp = model_llm.logits(ids).log_softmax(-1)
            total.append(-sum(float(lp[p - 1, ids[p]]) for p in range(len(ctx), len(ids))) / (len(ids) - len(ctx)))
        return sum(total) / len(total)

    base = nll(llm)
    assert abs(result["reference_nll"] - base) < 1e-4
    for layer in range(3):
        other = LLM(str(folder), dtype="float32", kv_cache_memory_gb=0.05, attention={
            "sliding_window": 10, "sink_tokens": 2, "full_layers": [i for i in range(3) if i != layer]})
        assert abs(result["nll_rise"][layer] - (nll(other) - base)) < 1e-4
    assert result["attention"]["full_layers"] == [result["ranking"][0]]
    assert evenly_spaced(36, 9) == [1, 5, 9, 13, 17, 21, 25, 29, 33] and evenly_spaced(36, 5, 1)[:2] == [1, 8]
    out = tmp_path / "layers.json"
    assert main(["select-layers", "--model", str(folder), "--dtype", "float32", "--data", str(data), "--budget", "2",
                 "--window", "10", "--out", str(out)]) == 0
    assert len(hybrid_attention.parse(str(out))["full_layers"]) == 2 and out.with_suffix(".png").stat().st_size > 1000
