"""Bad input gives one clear error naming the file, field or tensor (and nothing half-loaded)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import save_reference
from qwen3lab import LLM, SamplingParams
from qwen3lab.config import ConfigError

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64)


@pytest.fixture(scope="module")
def good(scratch):
    return save_reference(scratch("good"), "qwen3", vocab_size=151936, **TINY)[0]


@pytest.fixture
def broken(good, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(good, copy)
    return copy


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.json"):
        LLM(str(broken))


def test_unknown_model_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="gpt_neox.*qwen3"):
        LLM(str(broken))


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor(broken):
    _rewrite(broken, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing .*model\.layers\.1\.mlp\.up_proj\.weight"):
        LLM(str(broken))


def test_wrong_tensor_shape(broken):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    _rewrite(broken, edit)
    with pytest.raises(ValueError, match=r"k_proj\.weight.*\(16, 64\).*expected \(32, 64\)"):
        LLM(str(broken))


def test_truncated_safetensors(broken):
    path = broken / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated or corrupt"):
        LLM(str(broken))


def test_missing_weights_and_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        LLM(str(broken))
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        LLM(str(broken))


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"model\.gguf.*not a GGUF"):
        LLM(str(path))


def test_nonexistent_model():
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        LLM("no/such/folder/at/all")


def test_prompt_longer_than_context(good):
    llm = LLM(str(good), dtype="float32")
    with pytest.raises(ValueError, match=r"prompt has 80 tokens.*context window of 64"):
        llm.generate([list(range(80))], SamplingParams(max_tokens=4))
    # The engine keeps working after the rejected request.
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0))[0].token_ids) == 3
    # max_tokens is clipped to the room left in the window.
    out = llm.generate([list(range(60))], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(logprobs=50), "logprobs"),
    (dict(stop=[""]), "stop"),
])
def test_invalid_sampling_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} "):
        SamplingParams(**kwargs)


def test_invalid_dtype_and_token_ids(good):
    with pytest.raises(ValueError, match="dtype 'int8'"):
        LLM(str(good), dtype="int8")
    llm = LLM(str(good), dtype="float32")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 151936\)"):
        llm.generate([[5, 999999]])


def test_hub_id_without_network_says_how_to_supply_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"(?s)Qwen/Qwen3-4B.*hf download Qwen/Qwen3-4B.*--model DIR"):
        LLM("Qwen/Qwen3-4B")
