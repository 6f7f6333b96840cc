"""LoRA: our adapters are PEFT adapters (same logits in transformers + peft), merging is exact."""

import pytest
import torch
from train_helpers import conversations, tiny_checkpoint

from qwen3lab import LLM
from qwen3lab.lora import LoRALinear, apply_lora, load_adapter, lora_disabled, merge_lora
from qwen3lab.train.checkpoint import save_weights
from qwen3lab.train.sft import SFTConfig, train_sft
from qwen3lab.weights.loader import load_checkpoint

IDS = [9707, 1879, 11, 1246, 525, 498, 30, 151645, 198, 40, 1079, 6915, 13]


def test_lora_linear_starts_as_identity_and_can_be_disabled():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    layer = LoRALinear.from_base(base, r=4, alpha=8)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x))
    torch.nn.init.normal_(layer.lora_B.weight)
    assert not torch.allclose(layer(x), base(x))
    layer.disabled = True
    torch.testing.assert_close(layer(x), base(x))
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A.weight", "lora_B.weight"]


def test_apply_lora_refuses_no_match_and_lora_disabled_restores_base(tmp_path):
    model = load_checkpoint(tiny_checkpoint(tmp_path / "m"), torch.float32).model
    with pytest.raises(ValueError, match="no module matched"):
        apply_lora(model, target_modules=("nope",))
    names = apply_lora(model, r=2, alpha=4, target_modules=("q_proj", "down_proj"))
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                     "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    with lora_disabled(model):
        assert all(m.disabled for m in model.modules() if isinstance(m, LoRALinear))
    assert not any(m.disabled for m in model.modules() if isinstance(m, LoRALinear))


@pytest.fixture(scope="module")
def trained(scratch):
    root = scratch("lora")
    base = tiny_checkpoint(root / "base")
    train_sft(SFTConfig(model=str(base), train_file=str(conversations(root / "d.jsonl")), output_dir=str(root / "run"),
                        lora_r=4, lora_alpha=8, lora_dropout=0.0, pack_length=64, batch_size=2, max_steps=2,
                        warmup_steps=1, lr=5e-2, progress=False))
    return base, root / "run" / "final"


def test_adapter_loads_in_peft_with_the_same_logits(trained):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base, adapter = trained
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = hf(torch.tensor([IDS])).logits[0]
        ref = peft.PeftModel.from_pretrained(hf, adapter).eval()(torch.tensor([IDS])).logits[0]
    assert (ref - plain).abs().max() > 1e-3  # the two training steps moved the adapter away from identity
    ours = LLM(base, dtype="float32", lora=adapter).logits(IDS)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_merged_checkpoint_equals_base_plus_adapter(trained, tmp_path):
    base, adapter = trained
    with_adapter = LLM(base, dtype="float32", lora=adapter).logits(IDS)
    model = load_adapter(load_checkpoint(base, torch.float32).model, adapter)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    save_weights(model, tmp_path / "merged", base)
    torch.testing.assert_close(LLM(tmp_path / "merged", dtype="float32").logits(IDS), with_adapter, atol=1e-4, rtol=0)
