"""GRPO: built-in rewards, and two steps on a tiny model (rollouts by the engine, KL to the adapter-off policy)."""

import json

import pytest
import torch
from train_helpers import tiny_checkpoint

from qwen3lab.train.rewards import json_reward, math_reward, resolve_reward, tool_call_reward


def test_math_reward_reads_the_final_answer():
    assert math_reward("so 3 + 4 = \\boxed{7}", {"answer": "7"}) == 1.0
    assert math_reward("<think>maybe 6</think>The answer is 7.0", {"answer": "7"}) == 1.0
    assert math_reward("\\boxed{1/2}", {"answer": "0.5"}) == 1.0
    assert math_reward("\\boxed{8}", {"answer": "7"}) == 0.0
    assert math_reward("no idea", {"answer": "7"}) == 0.0


def test_json_and_tool_call_rewards():
    rec = {"name": "Ana", "age": 3}
    assert json_reward(json.dumps(rec), {"record": rec}) == 1.0
    assert json_reward('{"name": "Ana", "age": 4}', {"record": rec}) == 0.5
    assert json_reward('{"name": "Ana", "age": 4}', {"record": rec, "fields": ["name"]}) == 1.0
    assert json_reward("{not json", {"record": rec}) == 0.0
    want = {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert tool_call_reward(call, want) == 1.0
    assert tool_call_reward(call.replace("Paris", "Rome"), want) == 0.5
    assert tool_call_reward("It is sunny.", want) == 0.0
    assert resolve_reward("math") is math_reward
    with pytest.raises(ValueError, match="unknown reward"):
        resolve_reward("nope")


def test_grpo_steps_on_a_tiny_model(tmp_path, monkeypatch):
    from qwen3lab.train.grpo import GRPOConfig, train_grpo

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "myrewards.py").write_text("def short(c, ex):\n    return float(len(c) < 20)\n")
    base = tiny_checkpoint(tmp_path / "base")
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(4)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    recs = train_grpo(GRPOConfig(model=str(base), prompts_file=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "o"),
                                 rewards=("math", "myrewards:short"), group_size=4, prompts_per_step=2,
                                 max_new_tokens=6, beta=0.1, num_iterations=2, lora_r=4, lr=1e-2, max_steps=2,
                                 micro_batch=4, progress=False))
    assert [r["step"] for r in recs] == [1, 2]
    assert all(k in recs[0] for k in ("reward", "accuracy", "kl", "completion_len", "clip_frac"))
    assert 0 <= recs[0]["kl"] < 1 and recs[0]["clip_frac"] >= 0  # KL is averaged over the num_iterations updates
    logged = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    from safetensors.torch import load_file

    b = [v for k, v in load_file(str(tmp_path / "o" / "final" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert any(t.abs().max() > 0 for t in b)  # the policy moved


def test_token_logprobs_score_the_sampling_temperature(tmp_path):
    """GRPO's ratios and KL use the distribution that sampled: log_softmax(logits / T) of the engine."""
    from qwen3lab import LLM
    from qwen3lab.train.forward import TokenLogprobs, pack_batch

    llm = LLM(str(tiny_checkpoint(tmp_path / "m")), dtype="float32")
    ids = [3, 17, 5, 99, 42, 8]
    logits = llm.logits(ids)  # [len, vocab]: row j scores token j + 1
    flat, lens, pos, tgt = pack_batch([ids], [[True] * len(ids)], "cpu")
    for t in (1.0, 0.7):
        with torch.no_grad():
            got = TokenLogprobs(llm.model, temperature=t)(flat, lens, pos, tgt)
        want = torch.log_softmax(logits[:-1] / t, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
