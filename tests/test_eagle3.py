"""EAGLE3 drafting: the published checkpoint layout loads, and speculation with it is lossless.

Checkpoints here are written tensor by tensor under the exact names SpecForge/AngelSlim publish
(not through our own saver), so a renamed or reshaped tensor in the loader fails the test.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from checkpoints import qwen_tokenizer_dir, save_reference
from qwen3lab import LLM, SamplingParams, kernels

QWEN3_4B_DRAFT = dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, vocab_size=151936, draft_vocab_size=32000)


def write_eagle3(folder, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim,
                 vocab_size, draft_vocab_size, seed=0, dtype=torch.float32, std=0.05, **extra):
    """A random EAGLE3 head with the published names and shapes; d2t/t2d over a random draft vocabulary."""
    g = torch.Generator().manual_seed(seed)
    h, q, kv = hidden_size, num_attention_heads * head_dim, num_key_value_heads * head_dim

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def ones(n):
        return (1 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    chosen = torch.randperm(vocab_size, generator=g)[:draft_vocab_size].sort().values
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[chosen] = True
    tensors = {
        "fc.weight": rnd(h, 3 * h),
        "midlayer.hidden_norm.weight": ones(h),
        "midlayer.input_layernorm.weight": ones(h),
        "midlayer.post_attention_layernorm.weight": ones(h),
        "midlayer.self_attn.q_proj.weight": rnd(q, 2 * h),
        "midlayer.self_attn.k_proj.weight": rnd(kv, 2 * h),
        "midlayer.self_attn.v_proj.weight": rnd(kv, 2 * h),
        "midlayer.self_attn.o_proj.weight": rnd(h, q),
        "midlayer.mlp.gate_proj.weight": rnd(intermediate_size, h),
        "midlayer.mlp.up_proj.weight": rnd(intermediate_size, h),
        "midlayer.mlp.down_proj.weight": rnd(h, intermediate_size),
        "norm.weight": ones(h),
        "lm_head.weight": rnd(draft_vocab_size, h),
        "d2t": chosen - torch.arange(draft_vocab_size),
        "t2d": t2d,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
           "hidden_size": h, "intermediate_size": intermediate_size, "num_attention_heads": num_attention_heads,
           "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "num_hidden_layers": 1,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
           "rope_scaling": None, "tie_word_embeddings": False, "vocab_size": vocab_size,
           "draft_vocab_size": draft_vocab_size, "torch_dtype": "bfloat16", **extra}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_qwen3_4b_width_target(folder, num_layers=2):
    """A random Qwen3 target at the 4B widths (bf16, tied head), written directly: faster than transformers."""
    g = torch.Generator().manual_seed(7)
    h, inter, q, kv, d = 2560, 9728, 32 * 128, 8 * 128, 128

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": rnd(151936, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": rnd(q, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                  p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, q),
                  p + "self_attn.q_norm.weight": torch.ones(d, dtype=torch.bfloat16),
                  p + "self_attn.k_norm.weight": torch.ones(d, dtype=torch.bfloat16),
                  p + "mlp.gate_proj.weight": rnd(inter, h), p + "mlp.up_proj.weight": rnd(inter, h),
                  p + "mlp.down_proj.weight": rnd(h, inter),
                  p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                  p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": h, "intermediate_size": inter,
           "num_hidden_layers": num_layers, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": d,
           "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 40960,
           "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645}
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen_tokenizer_dir() / f, folder / f)
    return folder


def test_published_layout_at_qwen3_4b_widths_loads_and_drafts(tmp_path):
    from qwen3lab.speculative.eagle3_io import load_eagle3

    draft = write_eagle3(tmp_path / "eagle3", **QWEN3_4B_DRAFT, dtype=torch.bfloat16)
    model = load_eagle3(draft, torch.bfloat16)
    assert model.fc.weight.shape == (2560, 3 * 2560)
    qkv = model.midlayer.self_attn.qkv_proj  # q rows first: [4096, 5120]
    assert qkv.output_sizes[0] == 4096 and qkv.in_features == 5120
    assert model.lm_head.weight.shape == (32000, 2560) and model.d2t.dtype == torch.int64
    assert int(model.t2d.sum()) == 32000 and bool(model.t2d[model.draft_to_target(torch.arange(32000))].all())
    del model
    target = write_qwen3_4b_width_target(tmp_path / "target")
    llm = LLM(str(target), dtype="bfloat16", max_model_len=64, kv_cache_memory_gb=0.05,
              speculative={"method": "eagle3", "model": str(draft), "num_tokens": 2})
    drafter = llm.engine.drafter
    assert drafter.hidden_layers == (0, 1)  # (1, L/2-1, L-4) clamped for a 2-layer target
    seen = []
    propose = drafter.propose
    drafter.propose = lambda seqs, budgets: (propose(seqs, budgets), seen.extend(s.draft.tokens for s in seqs))
    out = llm.generate([[9707, 11, 1879, 0, 358]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert len(out[0].token_ids) == 4 and out[0].outputs[0].spec_drafted >= 2
    assert seen and len(seen[0]) == 2 and all(bool(drafter.model.t2d[t]) for t in seen[0])


TINY = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
PROMPTS = [
    "Name: Alice Smith. Age: 31. City: Lyon. Extract the name: Alice Smith. Extract the city:",
    "one two three four one two three four one two",
    "The quick brown fox",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def tiny(scratch):
    target = save_reference(scratch("target"), "qwen3", seed=0, **TINY)[0]
    draft = write_eagle3(scratch("eagle3"), hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=151936,
                         draft_vocab_size=2048, seed=3, std=0.2)
    return str(target), str(draft)


def test_greedy_output_is_identical_with_eagle3(tiny):
    target, draft = tiny
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, dtype="float32").generate(PROMPTS, params)]
    fast = LLM(target, dtype="float32", max_num_seqs=2, max_num_batched_tokens=20,  # chunked prefill too
               speculative={"method": "eagle3", "model": draft, "num_tokens": 3})
    assert fast.engine.drafter.hidden_layers == (0, 1)  # (1, 1, 0) for 4 layers, each captured once
    outs = fast.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == plain
    assert fast.engine.spec_stats["drafted"] > 0


def test_greedy_output_is_identical_with_eagle3_trees(tiny):
    target, draft = tiny
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, dtype="float32").generate(PROMPTS, params)]
    fast = LLM(target, dtype="float32", max_num_seqs=2, max_num_batched_tokens=20,
               speculative={"method": "eagle3", "model": draft, "num_tokens": 6, "topk": 3, "num_steps": 3})
    assert [o.token_ids for o in fast.generate(PROMPTS, params)] == plain
    assert fast.engine.spec_stats["drafted"] > 0


@pytest.mark.skipif(not kernels.amx(), reason="bit-identical bf16 needs batch-invariant kernels (AMX tiles here)")
@pytest.mark.parametrize("tree", [{}, {"topk": 3, "num_steps": 3, "num_tokens": 8}])
def test_greedy_output_is_identical_with_eagle3_in_bf16(tiny, tree):
    target, draft = tiny
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, dtype="bfloat16", max_num_seqs=2).generate(PROMPTS, params)]
    fast = LLM(target, dtype="bfloat16", max_num_seqs=2, speculative={"method": "eagle3", "model": draft,
                                                                      "num_tokens": 4, **tree})
    assert [o.token_ids for o in fast.generate(PROMPTS, params)] == plain
    assert fast.engine.spec_stats["drafted"] > 0


def test_sampled_drafts_carry_target_vocab_probs(tiny):
    target, draft = tiny
    llm = LLM(target, dtype="float32", speculative={"method": "eagle3", "model": draft, "num_tokens": 2})
    d = llm.engine.drafter
    captured = []
    propose = d.propose
    d.propose = lambda seqs, budgets: (propose(seqs, budgets),
                                       captured.extend((s.draft.tokens, s.draft.probs) for s in seqs))
    llm.generate(PROMPTS[:2], SamplingParams(max_tokens=6, temperature=0.8, seed=1, ignore_eos=True))
    toks, probs = captured[0]
    assert probs.shape == (2, 151936)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    assert bool((probs[:, ~d.model.t2d] == 0).all())  # mass only on draft-vocabulary ids
    assert all(probs[i, t] > 0 for i, t in enumerate(toks))


def test_bad_checkpoints_are_named(tmp_path, tiny):
    from safetensors.torch import load_file

    from qwen3lab.speculative.eagle3_io import load_eagle3

    folder = write_eagle3(tmp_path / "bad", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, vocab_size=151936, draft_vocab_size=2048)
    w = load_file(folder / "model.safetensors")
    w["midlayer.self_attn.q_proj.weight"] = w["midlayer.self_attn.q_proj.weight"][:, :64]
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="midlayer.self_attn.q_proj.weight"):
        load_eagle3(folder)
    with pytest.raises(ValueError, match="needs 'model'"):
        LLM(tiny[0], dtype="float32", speculative={"method": "eagle3"})


@torch.inference_mode()
def reference_chain(llm: LLM, drafter, ids: list[int], drafts: list[int]) -> list[torch.Tensor]:
    """The draft's outputs for a chain after ``ids``, recomputed from scratch without any cache.

    The EAGLE3 recurrence (SpecForge's training unroll, vLLM's proposer): row t sits at position t
    and reads the embedding of the token after it; its hidden input is fc(target features at t) for
    t < len(ids) - 1 and otherwise the draft's own output of row t - 1. Output j (the last row of
    a forward over ids[1:] + drafts[:j]) picks draft j + 1. Each output is computed by a full causal
    forward over all rows, so no KV cache, rollback or position bookkeeping is involved.
    """
    from qwen3lab.model import AttentionMetadata

    cfg, base, T = llm.model.config, drafter.model.config.base, len(ids)
    meta = AttentionMetadata.build([T], [T], cfg.layer_types, cfg.sliding_window, None)
    _, captured = llm.model(torch.tensor(ids), meta, None, output_hidden_layers=drafter.hidden_layers)
    hidden = drafter.model.fuse(torch.cat([captured[i] for i in drafter._aux_order], -1))[: T - 1]
    outs = []
    for j in range(max(len(drafts), 1)):
        rows = ids[1:] + drafts[:j]
        dmeta = AttentionMetadata.build([len(rows)], [len(rows)], base.layer_types, base.sliding_window, None)
        out = drafter.model(drafter.embed(torch.tensor(rows)), hidden, dmeta, None)
        outs.append(out[-1])
        hidden = torch.cat([hidden, out[-1:]])  # the next row is fed this row's pre-norm output
    return outs


def test_chain_drafting_matches_a_full_recompute(tiny):
    """Every token of every k-token chain, drafted through the draft's paged KV cache across steps
    with 0..k drafts accepted (features of accepted drafts kept, rejected ones trimmed, stale chain
    KV overwritten) after a chunked prefill, equals the from-scratch recurrence; chains end early
    near max_tokens."""
    target, draft = tiny
    k = 4
    params = SamplingParams(max_tokens=22, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, dtype="float32").generate(PROMPTS[:3], params)]
    llm = LLM(target, dtype="float32", max_num_seqs=2, max_num_batched_tokens=16,  # chunked prefill too
              speculative={"method": "eagle3", "model": draft, "num_tokens": k})
    d = llm.engine.drafter
    chains = []  # (token ids before the chain, drafted tokens, [(draft hidden, its own pick)] per draft)
    pick, propose = d._pick, d.propose

    def wrapped(seqs, budgets):
        depth, seen = [0], {s.seq_id: [] for s in seqs}
        truth = {s.seq_id: plain[int(s.request_id.split("-")[1])] for s in seqs}  # req-i is PROMPTS[i]

        def pick_oracle(ss, h):
            toks, probs = pick(ss, h)
            j, out = depth[0], []
            depth[0] += 1
            for r, (s, t) in enumerate(zip(ss, toks)):
                seen[s.seq_id].append((h[r].clone(), t))
                # Right for the first (output length % (k+1)) drafts, then as drafted: 0..k accepted.
                n_out, full = len(s.output_token_ids), truth[s.seq_id]
                out.append(full[n_out + j] if j < n_out % (k + 1) and n_out + j < len(full) else t)
            return out, probs

        before = {s.seq_id: list(s.all_token_ids) for s in seqs}
        d._pick = pick_oracle
        propose(seqs, budgets)
        chains.extend((before[s.seq_id], list(s.draft.tokens), seen[s.seq_id]) for s in seqs)

    d.propose = wrapped
    outs = llm.generate(PROMPTS[:3], params)
    assert [o.token_ids for o in outs] == plain
    counts = [len(c[1]) for c in chains]
    assert counts.count(k) > 5 and min(counts) < k  # full chains, and shorter ones at the end
    accepted = [o.outputs[0].spec_accepted for o in outs]
    assert llm.engine.spec_stats["accepted"] > 10 and all(a > 0 for a in accepted)
    for ids, drafts, hs in chains:
        ref = reference_chain(llm, d, ids, drafts)
        assert len(hs) == len(drafts) == len(ref)
        for j, ((h, tok), r) in enumerate(zip(hs, ref)):
            torch.testing.assert_close(h, r, atol=2e-4, rtol=1e-4, msg=lambda m: f"draft {j + 1} of {drafts}: {m}")
            assert tok == int(d.target_ids[d.model.compute_logits(r).argmax()])


def test_training_unroll_is_the_inference_recurrence(tiny):
    """TTT step i at row t (batched, padded) equals draft i+1 of the chain inference drafts after
    x_0..x_{t+1} when its earlier drafts were the data's next tokens: same fed-back hidden state,
    same positions, same attention context."""
    from qwen3lab.model import AttentionMetadata
    from qwen3lab.train.eagle3 import ttt_unroll

    target, draft = tiny
    llm = LLM(target, dtype="float32", speculative={"method": "eagle3", "model": draft, "num_tokens": 2})
    d, cfg = llm.engine.drafter, llm.model.config
    seqs = [llm.tokenizer.encode(p) for p in (PROMPTS[0], PROMPTS[1])]
    T, steps = max(map(len, seqs)), 4
    ids = torch.zeros(2, T, dtype=torch.long)
    aux = torch.zeros(2, T, 3 * cfg.hidden_size)
    with torch.inference_mode():
        for r, s in enumerate(seqs):
            meta = AttentionMetadata.build([len(s)], [len(s)], cfg.layer_types, cfg.sliding_window, None)
            _, captured = llm.model(torch.tensor(s), meta, None, output_hidden_layers=d.hidden_layers)
            ids[r, : len(s)], aux[r, : len(s)] = torch.tensor(s), torch.cat([captured[i] for i in d._aux_order], -1)
        outs = ttt_unroll(d.model, d.embed, ids, aux, steps)
    for r, s in enumerate(seqs):
        for t in (0, 3, len(s) - 2 - steps):
            ref = reference_chain(llm, d, s[: t + 2], s[t + 2: t + 2 + steps])  # the last one unused
            for i in range(steps):
                torch.testing.assert_close(outs[i][r, t], ref[i], atol=1e-4, rtol=1e-4)


def test_train_eagle3_cli_writes_the_published_layout(tmp_path, tiny):
    from safetensors import safe_open

    from qwen3lab.cli.main import main

    target, _ = tiny
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(4))
                    + json.dumps({"prompt": "Say hi.", "response": "hello world hello world"}) + "\n")
    out = tmp_path / "draft"
    assert main(["train-eagle3", "--target", target, "--data", str(data), "--out", str(out), "--steps", "4",
                 "--draft-vocab", "300", "--max-tokens", "12", "--batch-size", "2"]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert f.get_tensor("d2t").dtype == torch.int64 and f.get_tensor("t2d").dtype == torch.bool
        assert f.get_tensor("lm_head.weight").shape == (300, 64)
    assert names == {"fc.weight", "midlayer.hidden_norm.weight", "midlayer.input_layernorm.weight",
                     "midlayer.post_attention_layernorm.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
                     *(f"midlayer.self_attn.{p}_proj.weight" for p in "qkvo"),
                     *(f"midlayer.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["draft_vocab_size"] == 300
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    plain = LLM(target, dtype="float32").generate(PROMPTS[:2], params)
    fast = LLM(target, dtype="float32", speculative={"method": "eagle3", "model": str(out), "num_tokens": 2})
    assert [o.token_ids for o in fast.generate(PROMPTS[:2], params)] == [o.token_ids for o in plain]


def test_tree_drafting_matches_a_full_recompute(tiny):
    """EAGLE3 trees (k best nodes, branching topk, depth num_steps): every node is one of the top-k
    tokens the from-scratch recurrence gives after its parent's path; the nodes form a tree of at most
    num_tokens nodes and num_steps levels with at most topk children each, parents first, whose best
    root child is the chain's first draft; trees shrink near max_tokens."""
    target, draft = tiny
    K, steps, n = 3, 3, 7
    params = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)
    llm = LLM(target, dtype="float32", max_num_seqs=2, max_num_batched_tokens=16,
              speculative={"method": "eagle3", "model": draft, "num_tokens": n, "topk": K, "num_steps": steps})
    d = llm.engine.drafter
    trees, propose = [], d.propose

    def wrapped(seqs, budgets):
        before = {s.seq_id: list(s.all_token_ids) for s in seqs}
        propose(seqs, budgets)
        trees.extend((before[s.seq_id], list(s.draft.tokens), list(s.draft.parents), b) for s, b in zip(seqs, budgets))

    d.propose = wrapped
    llm.generate(PROMPTS[:3], params)
    assert len(trees) > 10 and any(len(t[1]) < n for t in trees) and any(len(t[1]) == n for t in trees)
    from qwen3lab.model import TokenTree

    for ids, toks, parents, budget in trees:
        tree = TokenTree(len(ids), tuple(parents))
        assert len(toks) <= budget and max(tree.depths()) <= steps
        assert all(parents.count(p) <= K for p in set(parents))
        for j in range(len(toks)):
            path = [toks[a] for a in tree.path(j)]
            h = reference_chain(llm, d, ids, path)[len(path) - 1]
            top = d.target_ids[d.model.compute_logits(h).topk(K).indices].tolist()
            assert toks[j] in top, (j, toks, parents)
            if j == 0:
                assert toks[0] == top[0]
