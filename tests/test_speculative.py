"""Speculative decoding is lossless: greedy output identical, sampled output distributed as the target.

The distribution check uses a vocabulary of 24 tokens so the exact joint distribution of the first
two tokens can be computed from the target's logits, and a different random model as the draft so
that rejections (and the residual resampling) really happen.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams, kernels

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def target(scratch):
    return str(save_reference(scratch("target"), "qwen3", seed=0, **TINY)[0])


@pytest.fixture(scope="module")
def draft(scratch):
    return str(save_reference(scratch("draft"), "qwen3", seed=1, **TINY)[0])


PROMPTS = [
    "Name: Alice Smith. Age: 31. City: Lyon. Extract the name: Alice Smith. Extract the city:",
    "one two three four one two three four one two",
    "The quick brown fox",
]


@pytest.mark.parametrize("spec", [
    {"method": "ngram", "num_tokens": 4},
    {"method": "draft", "num_tokens": 3},
    {"method": "draft", "num_tokens": 5, "same": True},
    {"method": "draft", "num_tokens": 6, "topk": 3, "num_steps": 3},
    {"method": "draft", "num_tokens": 6, "topk": 2, "num_steps": 4, "same": True},
])
def test_greedy_output_is_identical(target, draft, spec):
    spec = dict(spec)
    spec["model"] = target if spec.pop("same", False) else draft
    plain = [o.token_ids for o in LLM(target, dtype="float32").generate(PROMPTS, GREEDY)]
    fast = LLM(target, dtype="float32", speculative=spec, max_num_seqs=2)  # forces continuous batching
    outs = fast.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == plain
    stats = fast.engine.spec_stats
    assert stats["steps"] > 0
    if spec["method"] == "draft" and spec["model"] == target and "topk" not in spec:
        assert stats["accepted"] == stats["drafted"]  # the target drafting for itself is always right
    if spec["method"] == "draft" and spec["model"] == target and "topk" in spec:
        # Its own top-1 token is the tree's best node, so it is drafted and accepted at every step.
        assert stats["accepted"] >= stats["steps"] - len(PROMPTS)
    if spec["method"] == "ngram":
        assert outs[1].outputs[0].spec_accepted > 0  # the repeated pattern is found and accepted


@pytest.mark.skipif(not kernels.amx(), reason="bit-identical bf16 needs batch-invariant kernels (AMX tiles here)")
@pytest.mark.parametrize("quantization", [None, "int8", "int4"])
def test_greedy_output_is_identical_in_bf16(target, quantization):
    """In bf16, verifying k+1 tokens computes each exactly as decoding it would (AMX products whose rows do
    not depend on the batch, per-token decode attention), so speculation changes no token even where
    greedy choices are near ties, with other sequences sharing the batch."""
    kw = dict(dtype="bfloat16", quantization=quantization, max_num_seqs=2)
    params = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, **kw).generate(PROMPTS, params)]
    for spec in ({"method": "ngram", "num_tokens": 4}, {"method": "draft", "model": target, "num_tokens": 5},
                 {"method": "draft", "model": target, "num_tokens": 6, "topk": 2, "num_steps": 3}):
        fast = LLM(target, speculative=spec, **kw)
        assert [o.token_ids for o in fast.generate(PROMPTS, params)] == plain, spec
        assert fast.engine.spec_stats["accepted"] > 0


def test_stop_and_length_inside_accepted_drafts(target):
    plain = LLM(target, dtype="float32")
    fast = LLM(target, dtype="float32", speculative={"method": "draft", "model": target, "num_tokens": 4})
    full = plain.generate(PROMPTS[0], GREEDY)[0]
    stop_tok = full.token_ids[6]
    for p in (SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True),
              SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[stop_tok]),
              SamplingParams(max_tokens=30, temperature=0.0, stop=[full.text[5:9]], ignore_eos=True)):
        a, b = plain.generate(PROMPTS[0], p)[0], fast.generate(PROMPTS[0], p)[0]
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)


@torch.inference_mode()
def exact_second_token_distribution(llm: LLM, prompt: list[int], vocab: int) -> torch.Tensor:
    """P(second generated token) = sum over t of P(t) P(. | t), from the model's own logits."""
    p1 = llm.logits(prompt)[-1].softmax(-1)
    return sum(p1[t] * llm.logits(prompt + [t])[-1].softmax(-1) for t in range(vocab))


def sharp_checkpoint(folder, seed, vocab, scale=8):
    """An untied random model with a scaled head: peaked next-token distributions that differ per seed."""
    path = save_reference(folder, "qwen3", seed=seed, vocab_size=vocab, **{**TINY, "tie_word_embeddings": False})[0]
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"] *= scale
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return str(path)


def test_sampling_distribution_matches_target(tmp_path):
    vocab, n = 24, 2000
    target, draft = sharp_checkpoint(tmp_path / "t", 2, vocab), sharp_checkpoint(tmp_path / "d", 3, vocab)
    prompt = [3, 7, 1, 12]
    # max_tokens=3: the first token comes from the prompt's own step, the second is always produced
    # by verifying one draft token (accepted, or rejected and resampled from the residual).
    params = SamplingParams(n=n, max_tokens=3, temperature=1.0, seed=11, ignore_eos=True)
    llm = LLM(target, dtype="float32", max_num_seqs=256,
              speculative={"method": "draft", "model": draft, "num_tokens": 2})
    outs = llm.generate([prompt], params)[0].outputs
    drafted, accepted = sum(o.spec_drafted for o in outs), sum(o.spec_accepted for o in outs)
    assert drafted >= n and 0 < accepted < drafted  # both branches of the rule are exercised
    exact = exact_second_token_distribution(llm, prompt, vocab)
    empirical = torch.bincount(torch.tensor([o.token_ids[1] for o in outs]), minlength=vocab) / n
    tv = 0.5 * (empirical - exact).abs().sum().item()
    # Expected TV from sampling noise alone: 0.5 * sum E|p_hat - p| = 0.5 * sum sqrt(2 p (1-p) / (pi n)).
    noise = 0.5 * torch.sqrt(2 * exact * (1 - exact) / (torch.pi * n)).sum().item()
    draft_dist = exact_second_token_distribution(LLM(draft, dtype="float32"), prompt, vocab)
    draft_tv = 0.5 * (draft_dist - exact).abs().sum().item()
    assert tv < 1.6 * noise, (tv, noise)
    assert draft_tv > 5 * noise, "an accept-everything rule would land near the draft's distribution"


def test_acceptance_rule_reproduces_target_exactly():
    """The rule itself, without a model: first emitted token ~ p whatever q is."""
    from qwen3lab.speculative import verify

    g = torch.Generator().manual_seed(0)
    vocab, trials = 6, 20000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -2.0], [0.0] * 6])
    p = logits[0].softmax(-1)
    q = torch.tensor([0.05, 0.05, 0.6, 0.1, 0.1, 0.1])
    params = SamplingParams(temperature=1.0).resolve(None)
    counts = torch.zeros(vocab)
    for _ in range(trials):
        d = int(torch.multinomial(q, 1, generator=g))
        tokens, _ = verify(logits, [d], q.unsqueeze(0), params, [0], [], g)
        counts[tokens[0]] += 1
    chi2 = (((counts - trials * p) ** 2) / (trials * p)).sum().item()
    assert chi2 < 20.5, chi2  # 99.9% quantile of chi-square with 5 degrees of freedom
    greedy = SamplingParams(temperature=0.0).resolve(None)
    assert verify(logits, [0], None, greedy, [0], [], g) == ([0, 0], 1)
    assert verify(logits, [3], None, greedy, [0], [], g) == ([0], 0)


def test_bench_speculative_cli(target, tmp_path, capsys):
    """`qwen3lab bench --speculative`: both runs decode the same prompts; the target drafting for
    itself is always accepted and must not change the output."""
    import json

    from qwen3lab.cli.main import main

    out = tmp_path / "spec.json"
    spec = json.dumps({"method": "draft", "model": target, "num_tokens": 3})
    assert main(["bench", "--speculative", spec, "--model", target, "--spec-prompts", "2",
                 "--decode-tokens", "9", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["identical_to_plain"] and report["draft_acceptance"] == 1.0
    assert report["mean_accepted_length"] > 2 and report["plain_decode_tok_s"] > 0
    assert "speculative / plain:" in capsys.readouterr().out


# Token trees: nodes are listed parents first; -1 is the last real token.
TREE = (-1, -1, 0, 0, 1, 2, 4, 6)


@torch.inference_mode()
def forward_rows(llm: LLM, prompt: list[int], rows: list[list[int]], trees) -> list[torch.Tensor]:
    """Prefill ``prompt`` except its last token in a fresh paged cache, then feed each row (the last
    prompt token and more) in its own forward after it; logits [len(row), vocab] per row."""
    from qwen3lab.engine.kv_cache import PagedKVCache
    from qwen3lab.model import AttentionMetadata

    model, cfg = llm.model, llm.model.config
    cache = PagedKVCache(cfg, 8, 16, next(model.parameters()).dtype)
    table = list(range(8))

    def run(ids, ctx, tree):
        meta = AttentionMetadata.build([len(ids)], [ctx], cfg.layer_types, cfg.sliding_window, [table], 16,
                                       trees=[tree] if tree is not None else None)
        return model.compute_logits(model(torch.tensor(ids), meta, cache))

    run(prompt[:-1], len(prompt) - 1, None)
    return [run(prompt[-1:] + row, len(prompt) + len(row), tree) for row, tree in zip(rows, trees)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tree_attention_scores_every_path(target, dtype):
    """One forward over a token tree gives each node the logits of its own root-to-node path, fed as a
    chain (with the decode kernels in bf16, bit for bit: verification of a tree node is the decode
    of its path); a whole prompt followed by a tree in one prefill row gives them too (SDPA masks)."""
    from qwen3lab.model import TokenTree

    llm = LLM(target, dtype=dtype)
    prompt = llm.tokenizer.encode(PROMPTS[0])
    drafts = [101, 202, 303, 404, 505, 606, 707, 808]
    tree = TokenTree(len(prompt), TREE)
    chains = [[drafts[a] for a in tree.path(j)] for j in range(len(drafts))]
    got, *ref = forward_rows(llm, prompt, [drafts] + chains, [tree] + [None] * len(chains))
    exact = dtype == "bfloat16" and kernels.amx()
    for j, r in enumerate(ref):
        if exact:
            assert torch.equal(got[j + 1], r[-1]), f"node {j}"
        else:
            torch.testing.assert_close(got[j + 1], r[-1], atol=1e-4 if dtype == "float32" else 0.15, rtol=0.02)
    if dtype == "float32":  # the prompt and the tree as one prefill row
        from qwen3lab.engine.kv_cache import PagedKVCache
        from qwen3lab.model import AttentionMetadata

        cfg, n = llm.model.config, len(prompt) + len(drafts)
        meta = AttentionMetadata.build([n], [n], cfg.layer_types, cfg.sliding_window, [list(range(8))], 16,
                                       trees=[tree])
        with torch.inference_mode():
            whole = llm.model.compute_logits(llm.model(torch.tensor(prompt + drafts), meta,
                                                       PagedKVCache(cfg, 8, 16, torch.float32)))
        torch.testing.assert_close(whole[len(prompt) - 1:], got, atol=1e-4, rtol=1e-4)


def test_tree_acceptance_rule_reproduces_target_exactly():
    """The tree rule without a model: the first token ~ p at the root whichever children are drafted,
    and after an accepted child the next token ~ that child's row; greedy follows the argmax child."""
    from qwen3lab.speculative import verify_tree

    g = torch.Generator().manual_seed(0)
    vocab, trials = 6, 20000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -2.0],  # root
                           [0.0, 1.0, 2.0, 0.0, 0.0, 0.0],  # node 0 (token 2)
                           [1.0, 0.0, 0.0, 3.0, 0.0, 0.0],  # node 1 (token 0)
                           [0.0] * 6])  # node 2 (token 3, child of node 1)
    drafts, parents = [2, 0, 3], [-1, -1, 1]
    params = SamplingParams(temperature=1.0).resolve(None)
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    for _ in range(trials):
        tokens, path = verify_tree(logits, drafts, parents, params, [0], [], g)
        first[tokens[0]] += 1
        assert path == [j for j in path if j in (0, 1, 2)] and len(tokens) == len(path) + 1
        if tokens[0] == 0:
            second[tokens[1]] += 1
    for counts, p in ((first, logits[0].softmax(-1)), (second, logits[2].softmax(-1))):
        n = counts.sum()
        chi2 = (((counts - n * p) ** 2) / (n * p)).sum().item()
        assert chi2 < 20.5, chi2  # 99.9% quantile of chi-square with 5 degrees of freedom
    greedy = SamplingParams(temperature=0.0).resolve(None)
    assert verify_tree(logits, [2, 0, 3], parents, greedy, [0], [], g) == ([0, 3, 0], [1, 2])
    assert verify_tree(logits, [2, 1, 3], parents, greedy, [0], [], g) == ([0], [])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_greedy_output_is_identical_with_ngram_trees(target, dtype):
    """n-gram trees (every earlier continuation of the suffix, merged): the same greedy tokens as plain
    decoding with two requests sharing the batch, and accepted paths that leave the first branch, so
    their keys were moved into place (in bf16 with AMX, bit-identical verification makes this exact)."""
    if dtype == "bfloat16" and not kernels.amx():
        pytest.skip("bit-identical bf16 needs batch-invariant kernels (AMX tiles here)")
    prompts = PROMPTS + ["a b c d a b e f a b c g a b e h a b c d a b e f a b"]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    plain = [o.token_ids for o in LLM(target, dtype=dtype, max_num_seqs=2).generate(prompts, params)]
    fast = LLM(target, dtype=dtype, max_num_seqs=2, speculative={"method": "ngram", "num_tokens": 8, "topk": 3})
    paths = []
    verified = fast.engine.drafter.on_verified
    fast.engine.drafter.on_verified = lambda seq, n, path=None: (paths.append(path), verified(seq, n, path))
    assert [o.token_ids for o in fast.generate(prompts, params)] == plain
    trees = [p for p in paths if p is not None]
    assert trees and fast.engine.spec_stats["accepted"] > 0
    assert any(p != list(range(len(p))) for p in trees), "no accepted path left the first branch"
    if dtype == "float32":  # logprobs come from the accepted path's rows
        lp = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=2)
        want = [o.outputs[0].logprobs for o in LLM(target, dtype=dtype).generate(prompts, lp)]
        got = [o.outputs[0].logprobs for o in fast.generate(prompts, lp)]
        for gs, ws in zip(got, want):
            assert [sorted(g) for g in gs] == [sorted(w) for w in ws]
            for g, w in zip(gs, ws):
                assert all(abs(g[t] - w[t]) < 1e-4 for t in w)


def test_sampling_distribution_matches_target_with_trees(tmp_path, monkeypatch):
    """Tree drafts (n-gram tries: a prompt where every token was followed by several others) verified
    with the one-hot multi-candidate rule: the second generated token is distributed as the target's."""
    import qwen3lab.engine.speculation as engine_module

    vocab, n = 24, 2000
    target = sharp_checkpoint(tmp_path / "t", 2, vocab, scale=16)
    # A prompt the target wrote itself: its earlier continuations of a token are the likely ones, so
    # tree nodes are accepted often (and later siblings too).
    prompt = [3, 7] + LLM(target, dtype="float32").generate(
        [[3, 7]], SamplingParams(max_tokens=80, temperature=1.0, seed=4, ignore_eos=True))[0].token_ids
    # The first token comes from the prompt's step; the second from verifying a tree of up to 3 nodes.
    params = SamplingParams(n=n, max_tokens=5, temperature=1.0, seed=12, ignore_eos=True)
    llm = LLM(target, dtype="float32", max_num_seqs=256,
              speculative={"method": "ngram", "num_tokens": 4, "topk": 4, "max_ngram": 1})
    paths, verify_tree = [], engine_module.verify_tree
    monkeypatch.setattr(engine_module, "verify_tree", lambda *a, **k: (r := verify_tree(*a, **k), paths.append(r[1]))[0])
    outs = llm.generate([prompt], params)[0].outputs
    assert len(paths) > n // 4 and sum(bool(p) for p in paths) > n // 10  # nodes are accepted often
    assert any(p and p[0] > 0 for p in paths)  # later siblings too
    # The second token comes from the tree's root row, the third (when the second was a node) from
    # that node's row: the second's distribution and the joint of both are checked against the target's.
    with torch.inference_mode():
        p1 = llm.logits(prompt)[-1].softmax(-1)
        p2 = torch.stack([llm.logits(prompt + [t])[-1].softmax(-1) for t in range(vocab)])
        p3 = torch.stack([torch.stack([llm.logits(prompt + [a, b])[-1].softmax(-1) for b in range(vocab)])
                          for a in range(vocab)])
    second, joint = p1 @ p2, torch.einsum("a,ab,abc->bc", p1, p2, p3).reshape(-1)
    # (A node's logits taken from the wrong row reads 1.6x the noise on the joint with these seeds.)
    for exact, cell, bound in ((second, lambda t: t[1], 1.6), (joint, lambda t: t[1] * vocab + t[2], 1.4)):
        empirical = torch.bincount(torch.tensor([cell(o.token_ids) for o in outs]), minlength=len(exact)) / n
        tv = 0.5 * (empirical - exact).abs().sum().item()
        noise = 0.5 * torch.sqrt(2 * exact * (1 - exact) / (torch.pi * n)).sum().item()
        assert tv < bound * noise, (tv, noise)
