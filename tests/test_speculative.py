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
    if spec["method"] == "draft" and spec["model"] == target:
        assert stats["accepted"] == stats["drafted"]  # the target drafting for itself is always right
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
    for spec in ({"method": "ngram", "num_tokens": 4}, {"method": "draft", "model": target, "num_tokens": 5}):
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


def sharp_checkpoint(folder, seed, vocab):
    """An untied random model with a scaled head: peaked next-token distributions that differ per seed."""
    path = save_reference(folder, "qwen3", seed=seed, vocab_size=vocab, **{**TINY, "tie_word_embeddings": False})[0]
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"] *= 8
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
    from qwen3lab.spec import verify

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
