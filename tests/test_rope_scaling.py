"""Run-time rotary scaling: YaRN to 131k positions at Qwen3-4B's head width against transformers, a
run-time ``rope_scaling`` equal to a checkpoint declaring it, long-only scaling (short sequences
unscaled, a sequence restarted scaled when it crosses the original window) and bad input."""

from __future__ import annotations

import gc

import pytest
import torch

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.config import RopeConfig
from qwen3lab.model.rope import RotaryEmbedding
from qwen3lab.rope_scaling import parse

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             num_hidden_layers=2, max_position_embeddings=64)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def test_yarn_to_131k_positions_equals_transformers():
    """Qwen3-4B's rotary setup (head_dim 128, theta 1e6) with YaRN factor 4 over 32,768 original positions."""
    import transformers
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    cfg = transformers.Qwen3Config(hidden_size=2560, num_attention_heads=32, head_dim=128, max_position_embeddings=131072,
                                   rope_parameters={"rope_theta": 1e6, **scaling})
    ref = Qwen3RotaryEmbedding(cfg)
    ours = RotaryEmbedding(RopeConfig(theta=1e6, rope_type="yarn", factor=4.0, original_max_position_embeddings=32768), 128)
    pos = torch.tensor([0, 1, 4095, 32767, 32768, 65535, 100000, 131071])
    cos, sin = ref(torch.zeros(1, len(pos), 128), pos.unsqueeze(0))
    got_cos, got_sin = ours(pos, torch.float32)
    torch.testing.assert_close(got_cos, cos[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(got_sin, sin[0], atol=2e-5, rtol=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same random weights saved plain and with YaRN declared in config.json."""
    root = tmp_path_factory.mktemp("rope")
    plain, plain_ref = save_reference(root / "plain", "qwen3", vocab_size=4096, **SMALL)
    yarn, yarn_ref = save_reference(root / "yarn", "qwen3", vocab_size=4096, rope_scaling=YARN,
                                    **{**SMALL, "max_position_embeddings": 256})
    yield plain, plain_ref, yarn, yarn_ref
    del plain_ref, yarn_ref
    gc.collect()


def _ids(n, seed):
    return torch.randint(0, 4096, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def test_run_time_yarn_equals_a_checkpoint_declaring_it(pair):
    plain, _, _, yarn_ref = pair
    llm = LLM(str(plain), dtype="float32", kv_cache_memory_gb=0.05, rope_scaling=YARN)
    assert llm.config.max_position_embeddings == 256 and llm.engine.max_model_len == 256
    ids = _ids(200, 1)
    expected = yarn_ref(torch.tensor([ids])).logits[0]
    assert (llm.logits(ids) - expected).abs().max().item() < 1e-4
    assert (llm.logits(ids, chunk=48) - expected).abs().max().item() < 1e-4
    short = _ids(40, 2)  # static YaRN scales short sequences too, as transformers does
    assert (llm.logits(short) - yarn_ref(torch.tensor([short])).logits[0]).abs().max().item() < 1e-4


def _greedy(ref_for, ids, steps):
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(ref_for(len(seq))(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


@torch.inference_mode()
def test_long_only_scales_just_the_sequences_past_the_window(pair):
    plain, plain_ref, _, yarn_ref = pair
    llm = LLM(str(plain), dtype="float32", kv_cache_memory_gb=0.05, max_num_batched_tokens=32,
              rope_scaling={**YARN, "long_only": True})
    short, long = _ids(40, 3), _ids(150, 4)
    assert (llm.logits(short) - plain_ref(torch.tensor([short])).logits[0]).abs().max().item() < 1e-4
    assert (llm.logits(long) - yarn_ref(torch.tensor([long])).logits[0]).abs().max().item() < 1e-4
    greedy = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    # A 50-token prompt runs unscaled until its next position would pass 64, then restarts scaled.
    crossing = _ids(50, 5)
    expected = _greedy(lambda n: yarn_ref if n > 64 else plain_ref, crossing, 40)
    outs = llm.generate([crossing, short, long], greedy)
    assert outs[0].outputs[0].token_ids == expected
    assert llm.engine.scheduler.num_preemptions == 2  # the 50- and the 40-token prompts both cross 64
    assert outs[1].outputs[0].token_ids == _greedy(lambda n: yarn_ref if n > 64 else plain_ref, short, 40)
    assert outs[2].outputs[0].token_ids == _greedy(lambda n: yarn_ref, long, 40)
    # The long prompt's blocks are cached under the scaled embedding only: a short prompt sharing its
    # first 48 tokens recomputes them unscaled, the long prompt again hits its own.
    again = llm.generate([long[:48], long], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert again[0].outputs[0].token_ids == _greedy(lambda n: plain_ref, long[:48], 4)
    assert again[1].outputs[0].token_ids == _greedy(lambda n: yarn_ref, long, 4)


@pytest.mark.parametrize("spec,message", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embedings": 32768}, "unknown key"),
    ({"rope_type": "yarn", "factor": 0.5}, "'factor' must be a number >= 1"),
    ({"rope_type": "ntk", "factor": 2.0}, "'rope_type' must be one of"),
    ({"rope_type": "yarn", "factor": 4.0, "long_only": "yes"}, "'long_only' must be true or false"),
    ("{not json", "not JSON"),
    ("no-such-file.json", "neither a JSON object nor a file"),
])
def test_bad_rope_scaling_is_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse(spec)
