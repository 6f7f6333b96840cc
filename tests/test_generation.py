"""Generation through the engine on a small random Qwen3 with the real tokenizer.

Sampling warpers are checked against transformers' logits processors; stop conditions, streaming,
logprobs, n, seeds, continuous batching and chunked prefill against the engine's own plain runs.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.sampling import processed_probs
from qwen3lab.sampling.sampler import apply_penalties

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(scratch):
    return save_reference(scratch("tiny"), "qwen3", **TINY)[0]


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(str(folder), dtype="float32")


def test_sampling_warpers_match_transformers():
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 500, generator=g) * 3
    settings = [(0.7, 20, 0.9, 0.0), (1.3, 0, 0.5, 0.0), (1.0, 50, 1.0, 0.1), (0.5, 0, 1.0, 0.0)]
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m).resolve(None) for t, k, p, m in settings]
    ours = processed_probs(logits.clone(), params)
    for i, (t, k, p, m) in enumerate(settings):
        x = logits[i: i + 1].clone()
        for warper in [TemperatureLogitsWarper(t)] + ([TopKLogitsWarper(k)] if k else []) + \
                [TopPLogitsWarper(p)] + ([MinPLogitsWarper(m)] if m else []):
            x = warper(None, x)
        torch.testing.assert_close(ours[i], x.softmax(-1)[0], atol=1e-6, rtol=1e-5)


def test_penalties_match_transformers_and_openai():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    prompt, output = [1, 5, 7], [7, 9, 9, 9]
    p = SamplingParams(repetition_penalty=1.3).resolve(None)
    expect = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + output]), logits.clone())
    torch.testing.assert_close(apply_penalties(logits.clone(), [p], [prompt], [output]), expect)
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25).resolve(None)
    got = apply_penalties(logits.clone(), [p], [prompt], [output])
    expect = logits.clone()
    expect[0, 7] -= 0.5 + 0.25  # OpenAI: presence once, frequency per occurrence, output tokens only
    expect[0, 9] -= 0.5 + 3 * 0.25
    torch.testing.assert_close(got, expect)


def test_seed_gives_same_output_whatever_the_batch(llm):
    p = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPT, p)[0].token_ids
    batched = llm.generate(["Another prompt", PROMPT, "And a third"], p)[1].token_ids
    assert alone == batched
    other = llm.generate(PROMPT, SamplingParams(max_tokens=16, temperature=1.0, seed=4321, ignore_eos=True))
    assert other[0].token_ids != alone


def test_n_samples_differ_and_are_reproducible(llm):
    p = SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    a, b = llm.generate(PROMPT, p)[0], llm.generate(PROMPT, p)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) == 3


def test_stop_strings(llm):
    full = llm.generate(PROMPT, GREEDY)[0].text
    stop = full[8:12]
    assert stop.strip(), "need a visible stop string"
    out = llm.generate(PROMPT, SamplingParams(max_tokens=24, temperature=0.0, stop=[stop], ignore_eos=True))[0]
    assert out.text == full[: full.index(stop)] and out.finish_reason == "stop"
    assert out.outputs[0].stop_reason == stop
    out = llm.generate(PROMPT, SamplingParams(max_tokens=24, temperature=0.0, stop=stop, ignore_eos=True,
                                              include_stop_str_in_output=True))[0]
    assert out.text == full[: full.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(llm):
    full = llm.generate(PROMPT, GREEDY)[0].token_ids
    tok = full[2]
    first = full.index(tok)
    out = llm.generate(PROMPT, SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=[tok]))[0]
    assert out.token_ids == full[: first + 1] and out.outputs[0].stop_reason == tok
    out = llm.generate(PROMPT, SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=[tok],
                                              min_tokens=first + 2))[0]
    assert tok not in out.token_ids[: first + 2] and len(out.token_ids) >= first + 2


def test_max_tokens_and_length_finish(llm):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_streaming_equals_full_text(llm):
    full = llm.generate(PROMPT, GREEDY)[0]
    deltas = list(llm.stream(PROMPT, GREEDY))
    assert "".join(d.text for d in deltas) == full.text
    assert [t for d in deltas for t in d.token_ids] == full.token_ids
    assert deltas[-1].finished and deltas[-1].finish_reason == "length"
    stop = full.text[10:13]
    p = SamplingParams(max_tokens=24, temperature=0.0, stop=[stop], ignore_eos=True)
    assert "".join(d.text for d in llm.stream(PROMPT, p)) == llm.generate(PROMPT, p)[0].text


def test_logprobs_match_model_distribution(llm):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=6, temperature=0.8, seed=3, logprobs=3,
                                              ignore_eos=True))[0].outputs[0]
    prompt_ids = llm.tokenizer.encode(PROMPT)
    ref = llm.logits(prompt_ids + out.token_ids).log_softmax(-1)[len(prompt_ids) - 1: -1]
    for step, (tok, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert next(iter(entry)) == tok and len(entry) in (3, 4)
        top = ref[step].topk(3).indices.tolist()
        assert set(top) <= set(entry)
        for t, lp in entry.items():
            assert abs(lp - ref[step, t].item()) < 1e-4


def test_continuous_batching_and_chunked_prefill_match_plain_runs(folder, llm):
    prompts = [PROMPT, "Hello", "A much longer prompt " * 6, "x y z", "Qwen3 is a family of models"]
    expected = [llm.generate(p, GREEDY)[0].token_ids for p in prompts]
    small = LLM(str(folder), dtype="float32", max_num_seqs=2, max_num_batched_tokens=8)
    assert [o.token_ids for o in small.generate(prompts, GREEDY)] == expected
    # A pool of 6 blocks x 16 tokens cannot hold all five at once: preemption and recompute.
    per_token = 2 * 2 * 2 * 16 * 4  # k+v, layers, kv heads, head_dim, fp32
    tight = LLM(str(folder), dtype="float32", kv_cache_memory_gb=6 * 16 * per_token / 2**30)
    assert [o.token_ids for o in tight.generate(prompts, GREEDY)] == expected
    assert tight.engine.scheduler.num_preemptions > 0


def test_prefix_cache_hits_do_not_change_outputs(folder, llm):
    shared = "You are a helpful assistant. " * 8
    prompts = [shared + "Question one?", shared + "Question two?"]
    expected = [llm.generate(p, GREEDY)[0].token_ids for p in prompts]
    fresh = LLM(str(folder), dtype="float32")
    got = [fresh.generate(p, GREEDY)[0].token_ids for p in prompts]  # the second reuses the first's blocks
    assert got == expected and fresh.engine.blocks.hit_tokens >= 48
    off = LLM(str(folder), dtype="float32", enable_prefix_caching=False)
    assert [off.generate(p, GREEDY)[0].token_ids for p in prompts] == expected
    assert off.engine.blocks.hit_tokens == 0


def test_generation_config_defaults_and_eos(folder, llm, tmp_path):
    full = llm.generate(PROMPT, GREEDY)[0].token_ids
    eos = full[3]
    copy = tmp_path / "with_gen"
    shutil.copytree(folder, copy)
    (copy / "generation_config.json").write_text(json.dumps({"do_sample": False, "eos_token_id": [eos]}))
    other = LLM(str(copy), dtype="float32")
    out = other.generate(PROMPT, SamplingParams(max_tokens=24))[0]  # greedy comes from do_sample=false
    assert out.token_ids == full[: full.index(eos) + 1] and out.finish_reason == "stop"


def test_chat_renders_template_and_parses(llm):
    messages = [{"role": "user", "content": "Hi there"}]
    res = llm.chat(messages, enable_thinking=False, sampling=SamplingParams(max_tokens=8, temperature=0.0))
    expected = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    assert llm.tokenizer.decode(res.prompt_token_ids) == expected
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert res.reasoning_content is None and res.content == (res.text.strip() or None)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_tracks_transformers(folder, dtype):
    """Half precision cannot match bit for bit; it must stay as close to fp32 as the reference does."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 151643, (1, 40), generator=torch.Generator().manual_seed(5))
    ref32 = LLM(str(folder), dtype="float32").logits(ids[0].tolist())
    ours = LLM(str(folder), dtype=dtype)
    assert ours.model.lm_head.weight.dtype == getattr(torch, dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
    with torch.inference_mode():
        theirs = hf(ids).logits[0].float()
    err_ours = (ours.logits(ids[0].tolist()) - ref32).abs().max().item()
    err_theirs = (theirs - ref32).abs().max().item()
    assert err_ours <= 2 * err_theirs + 1e-3, (err_ours, err_theirs)
    out = ours.generate(PROMPT, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    assert len(out.token_ids) == 8


def test_chunked_logits_through_the_cache_equal_one_pass(folder):
    """LLM.logits(chunk=k) feeds k tokens at a time through the paged cache: same logits as one pass."""
    llm = LLM(folder, dtype="float32", kv_cache_memory_gb=0.01)
    ids = list(range(1000, 1050))
    whole = llm.logits(ids)
    for chunk in (1, 7, 16):
        torch.testing.assert_close(llm.logits(ids, chunk=chunk), whole, atol=1e-4, rtol=1e-4)
