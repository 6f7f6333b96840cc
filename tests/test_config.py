"""Config parsing: the three RoPE spellings, layer types, generation defaults, and clear errors."""

import json

import pytest

from qwen3lab.config import ConfigError, GenerationDefaults, ModelConfig

BASE = dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
            max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1000000,
            use_sliding_window=False, sliding_window=None, max_window_layers=36, bos_token_id=151643,
            eos_token_id=151645, torch_dtype="bfloat16")


def test_qwen3_4b_config():
    c = ModelConfig.from_dict(BASE)
    assert (c.head_dim, c.num_key_value_heads, c.tie_word_embeddings, c.qk_norm) == (128, 8, True, True)
    assert c.rope.theta == 1e6 and c.rope.rope_type == "default"
    assert set(c.layer_types) == {"full_attention"} and c.sliding_window is None
    assert not c.qkv_bias and c.eos_token_ids == (151645,)
    assert 3.9e9 < c.num_parameters < 4.1e9  # 4.02 B per the model card


@pytest.mark.parametrize("spelling", [
    {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
    {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000, "factor": 4.0,
                         "original_max_position_embeddings": 32768}},
])
def test_yarn_spellings_agree(spelling):
    cfg = {**BASE, **spelling}
    if "rope_parameters" in spelling:
        cfg.pop("rope_theta")
    rope = ModelConfig.from_dict(cfg).rope
    assert (rope.rope_type, rope.factor, rope.original_max_position_embeddings, rope.theta) == \
        ("yarn", 4.0, 32768, 1e6)


def test_sliding_window_layers_follow_transformers():
    c = ModelConfig.from_dict({**BASE, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 30})
    assert c.layer_types[:30] == ("full_attention",) * 30 and c.layer_types[30:] == ("sliding_attention",) * 6
    # Without use_sliding_window the window is ignored, as transformers does.
    c = ModelConfig.from_dict({**BASE, "sliding_window": 4096, "max_window_layers": 30})
    assert c.sliding_window is None and set(c.layer_types) == {"full_attention"}


def test_explicit_layer_types_are_honoured():
    types = ["full_attention", "sliding_attention"] * 18
    c = ModelConfig.from_dict({**BASE, "use_sliding_window": True, "sliding_window": 512, "layer_types": types})
    assert list(c.layer_types) == types and c.sliding_window == 512


def test_qwen2_and_llama_flags():
    q2 = ModelConfig.from_dict({**BASE, "model_type": "qwen2", "head_dim": None})
    assert q2.qkv_bias and not q2.o_bias and not q2.qk_norm and q2.head_dim == 80
    ll = ModelConfig.from_dict({**BASE, "model_type": "llama", "attention_bias": True,
                                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    assert ll.qkv_bias and ll.o_bias and ll.rope.rope_type == "llama3"


@pytest.mark.parametrize("change,field", [
    ({"model_type": "mamba"}, "model_type"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": 7}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope"),
    ({"rope_scaling": {"rope_type": "yarn"}}, "factor"),
    ({"layer_types": ["full_attention"] * 3}, "layer_types"),
    ({"layer_types": ["global"] * 36, "use_sliding_window": True, "sliding_window": 8}, "layer_types"),
    ({"vocab_size": -5}, "vocab_size"),
])
def test_bad_configs_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict({**BASE, **change}, source="config.json")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path / "config.json")


def test_generation_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [151645, 151643]}))
    g = GenerationDefaults.from_dir(tmp_path)
    assert (g.temperature, g.top_p, g.top_k, g.eos_token_ids) == (0.6, 0.95, 20, (151645, 151643))
    assert GenerationDefaults.from_dict({"do_sample": False, "temperature": 0.7}).temperature == 0.0
