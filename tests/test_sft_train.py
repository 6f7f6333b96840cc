"""SFT loop: exact resume, and torchrun (2 processes, gloo) equal to one process at the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from train_helpers import conversations, tiny_checkpoint

from qwen3lab.train.sft import SFTConfig, train_sft

COMMON = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, pack_length=48, batch_size=4, max_steps=4,
              warmup_steps=1, lr=2e-2, progress=False)


@pytest.fixture(scope="module")
def setup(scratch):
    root = scratch("sft")
    base, data = tiny_checkpoint(root / "base"), conversations(root / "d.jsonl")
    # One process, two accumulation steps of two packs: the reference curve.
    recs = train_sft(SFTConfig(model=str(base), train_file=str(data), output_dir=str(root / "full"), grad_accum=2,
                               save_every=2, **COMMON))
    return root, base, data, [r["loss"] for r in recs]


def test_loss_goes_down_and_checkpoints_are_written(setup):
    root, _, _, losses = setup
    assert losses[-1] < losses[0]
    assert (root / "full" / "checkpoint-2" / "trainer_state.pt").exists()
    assert (root / "full" / "final" / "adapter_model.safetensors").exists()
    assert len((root / "full" / "log.jsonl").read_text().splitlines()) == 4


def test_resume_continues_the_same_loss_curve(setup):
    root, base, data, losses = setup
    recs = train_sft(SFTConfig(model=str(base), train_file=str(data), output_dir=str(root / "resumed"), grad_accum=2,
                               resume_from=str(root / "full" / "checkpoint-2"), **COMMON))
    assert [r["step"] for r in recs] == [3, 4]
    assert [r["loss"] for r in recs] == pytest.approx(losses[2:], rel=1e-6, abs=0)


def test_torchrun_two_processes_match_one_process(setup):
    root, base, data, losses = setup
    out = root / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "qwen3lab.cli", "sft", "--model", str(base), "--train-file", str(data), "--output-dir", str(out),
           "--grad-accum", "1", "--save-every", "4", "--no-progress"]
    for k, v in COMMON.items():
        if k != "progress":
            cmd += ["--" + k.replace("_", "-"), str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert ddp == pytest.approx(losses, rel=1e-5)
    assert (out / "checkpoint-4" / "adapter_model.safetensors").exists()  # written once, by rank 0


def test_bf16_autocast_with_gradient_checkpointing(setup, tmp_path):
    _, base, data, _ = setup
    recs = train_sft(SFTConfig(model=str(base), train_file=str(data), output_dir=str(tmp_path / "bf16"), bf16=True,
                               gradient_checkpointing=True, **{**COMMON, "max_steps": 1}))
    assert recs[0]["loss"] == pytest.approx(setup[3][0], rel=2e-2)  # bf16 rounding only
