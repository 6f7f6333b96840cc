"""SFT memory savings change no numbers: the chunked head, LoRA's mask dropout, the bf16 base."""

import pytest
import torch
from train_helpers import conversations, tiny_checkpoint

from qwen3lab.lora import LoRALinear, apply_lora
from qwen3lab.train import forward
from qwen3lab.train.forward import TokenLogprobs, pack_batch
from qwen3lab.train.sft import SFTConfig, train_sft
from qwen3lab.weights.loader import load_checkpoint


def test_chunked_head_matches_one_chunk_in_values_and_gradients(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = load_checkpoint(tiny_checkpoint(tmp_path / "m"), torch.float32).model.train()
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.02)
    seqs = [list(range(100, 140)), list(range(300, 325))]
    inputs = pack_batch(seqs, [[j % 3 != 0 for j in range(len(s))] for s in seqs], "cpu")
    module = TokenLogprobs(model, gradient_checkpointing=True)

    def run():
        lp = module(*inputs)
        lp.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return lp.detach(), grads

    whole, whole_grads = run()
    monkeypatch.setattr(forward, "LOGIT_CHUNK", 7 * model.config.vocab_size)  # chunks of 7 targets
    chunked, chunked_grads = run()
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # float32 sums in another order


def test_lora_dropout_keeps_a_bool_mask_and_is_unbiased():
    torch.manual_seed(0)
    layer = LoRALinear.from_base(torch.nn.Linear(16, 8), r=4, alpha=8, dropout=0.25)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 16, requires_grad=True)
    expected = layer.eval()(x).detach()
    layer.train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    assert sum(t.dtype == torch.bool and t.shape == x.shape for t in saved) == 1
    # The dropped-out input that lora_A needs is the only float tensor of x's size kept (no float noise).
    assert sum(t.is_floating_point() and t.shape == x.shape for t in saved) == 1
    with torch.no_grad():
        samples = torch.stack([layer(x) for _ in range(4000)])
    # Unbiased: the mean of dropped-out outputs is the eval output, within 5 standard errors.
    assert ((samples.mean(0) - expected).abs() < 5 * samples.std(0) / 4000**0.5 + 1e-6).all()


def test_bf16_lora_sft_stores_the_frozen_base_in_bf16(tmp_path, monkeypatch):
    base, data = tiny_checkpoint(tmp_path / "m"), conversations(tmp_path / "d.jsonl")
    seen = []
    real = load_checkpoint

    def spy(model, dtype=torch.bfloat16, device="cpu"):
        seen.append(dtype)
        return real(model, dtype, device)

    monkeypatch.setattr("qwen3lab.train.sft.load_checkpoint", spy)
    common = dict(model=str(base), train_file=str(data), pack_length=48, batch_size=2, max_steps=1, warmup_steps=1,
                  progress=False)
    train_sft(SFTConfig(output_dir=str(tmp_path / "a"), bf16=True, lora_r=4, **common))
    train_sft(SFTConfig(output_dir=str(tmp_path / "b"), bf16=True, lora_r=0, **common))
    assert seen == [torch.bfloat16, torch.float32]  # full fine-tuning keeps float32 master weights


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_lora_eval_output_does_not_depend_on_dropout(p):
    torch.manual_seed(0)
    layer = LoRALinear.from_base(torch.nn.Linear(16, 8), r=4, alpha=8, dropout=p).eval()
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), layer.base(x) + layer.lora_B(layer.lora_A(x)) * layer.scaling)
