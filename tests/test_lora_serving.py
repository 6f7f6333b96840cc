"""Several LoRA adapters served at once, chosen per request: each computes what that adapter alone does.

The reference for every adapter is ``LLM(base, lora=folder)``, the single-adapter module swap whose
logits match PEFT + transformers (test_lora.py); the reference for the base is the plain model.
"""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from serve_fixtures import KEY, ServerThread, raw
from train_helpers import random_adapter, tiny_checkpoint

from qwen3lab import LLM, SamplingParams
from qwen3lab.serve import ServerConfig, build_app

IDS = [9707, 1879, 11, 1246, 525, 498, 30, 151645, 198, 40, 1079, 6915, 13]
LONG = [(7 * i + 3) % 5000 + 100 for i in range(40)]  # two full 16-token blocks plus a tail
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
SMALL = dict(dtype="float32", kv_cache_memory_gb=0.05, max_model_len=512)
# Two adapters unlike each other: every projection at rank 4, and only q/down at rank 8.
ADAPTERS = {"all4": (4, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
            "qd8": (8, ("q_proj", "down_proj"))}


@pytest.fixture(scope="module")
def setup(scratch):
    root = scratch("multi-lora")
    base = tiny_checkpoint(root / "base")
    folders = {name: random_adapter(base, root / name, r, targets, seed)
               for seed, (name, (r, targets)) in enumerate(ADAPTERS.items())}
    return base, folders


@pytest.fixture(scope="module")
def singles(setup):
    base, folders = setup
    return {None: LLM(base, **SMALL), **{n: LLM(base, lora=f, **SMALL) for n, f in folders.items()}}


def test_each_adapter_gives_its_own_logits(setup, singles):
    base, folders = setup
    multi = LLM(base, lora_adapters=folders, **SMALL)
    plain = singles[None].logits(IDS)
    for name in folders:
        want = singles[name].logits(IDS)
        assert (want - plain).abs().max() > 0.1  # the adapter changes the model
        torch.testing.assert_close(multi.logits(IDS, adapter=name), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(multi.logits(IDS, chunk=4, adapter=name), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(multi.logits(IDS), plain, atol=1e-5, rtol=0)


def test_one_batch_mixes_base_and_adapters(setup, singles):
    base, folders = setup
    multi = LLM(base, lora_adapters=folders, **SMALL)
    jobs = [(None, IDS), ("all4", IDS), ("qd8", IDS[:7]), ("all4", LONG), (None, LONG[:20])]
    want = [singles[a].generate([p], GREEDY)[0].outputs[0].token_ids for a, p in jobs]
    ids = [multi.engine.add_request(p, GREEDY, adapter=a) for a, p in jobs]
    steps = 0
    while multi.engine.has_unfinished():
        multi.engine.step()
        steps += 1
    assert steps <= GREEDY.max_tokens + 1  # all five ran in the same steps, not one after another
    got = [multi.engine.pop(r).outputs[0].token_ids for r in ids]
    assert got == want


def test_prefix_cache_is_never_shared_across_adapters(setup, singles):
    base, folders = setup
    multi = LLM(base, lora_adapters=folders, **SMALL)

    def run(adapter):
        out = multi.generate([LONG], GREEDY, adapter=adapter)[0].outputs[0]
        return out.token_ids, out.num_cached_tokens

    assert run(None) == (singles[None].generate([LONG], GREEDY)[0].outputs[0].token_ids, 0)
    tokens, cached = run("all4")  # the same prompt under an adapter: the base model's blocks do not apply
    assert cached == 0 and tokens == singles["all4"].generate([LONG], GREEDY)[0].outputs[0].token_ids
    assert run("all4") == (tokens, 32)  # its own blocks do
    assert run("qd8")[1] == 0


def test_bad_adapter_requests_and_files_are_refused(setup, tmp_path):
    base, folders = setup
    multi = LLM(base, lora_adapters={"all4": folders["all4"]}, **SMALL)
    with pytest.raises(ValueError, match="no LoRA adapter named 'nope'.*loaded: all4"):
        multi.generate([IDS], GREEDY, adapter="nope")
    with pytest.raises(ValueError, match="no LoRA adapters are loaded"):
        LLM(base, **SMALL).generate([IDS], GREEDY, adapter="all4")
    with pytest.raises(ValueError, match="either lora="):
        LLM(base, lora=folders["all4"], lora_adapters=folders, **SMALL)
    # An adapter for another architecture: its keys name modules this model does not have.
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text((folders["qd8"] / "adapter_config.json").read_text())
    from safetensors.torch import load_file, save_file

    tensors = {k.replace("self_attn.q_proj", "self_attn.c_attn"): v
               for k, v in load_file(folders["qd8"] / "adapter_model.safetensors").items()}
    save_file(tensors, other / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: .*c_attn.*does not match"):
        LLM(base, lora_adapters={"other": other}, **SMALL)


def test_server_selects_the_adapter_by_model_name(setup, singles):
    base, folders = setup
    llm = LLM(base, lora_adapters=folders, **SMALL)
    config = ServerConfig(served_model_names=["tiny"], api_key=KEY)
    with ServerThread(build_app(llm, config)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"tiny", "all4", "qd8"}
        assert cards["all4"].parent == "tiny" and cards["all4"].root == str(folders["all4"])
        assert cards["tiny"].parent is None

        prompts = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
        jobs = [(model, p) for p in prompts for model in ("tiny", "all4", "qd8")]

        def ask(job):
            model, prompt = job
            r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                          extra_body={"ignore_eos": True})
            return r.model, r.choices[0].text

        with ThreadPoolExecutor(len(jobs)) as pool:  # concurrent: adapters and base share batches
            got = list(pool.map(ask, jobs))
        for (model, prompt), (answered, text) in zip(jobs, got):
            ref = singles[None if model == "tiny" else model]
            assert answered == model
            assert text == ref.generate(prompt, GREEDY)[0].outputs[0].text, (model, prompt)

        msg = [{"role": "user", "content": "Hi"}]
        r = client.chat.completions.create(model="qd8", messages=msg, max_tokens=8, temperature=0,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        want = singles["qd8"].chat(msg, enable_thinking=False, sampling=SamplingParams(max_tokens=8, temperature=0))
        assert r.model == "qd8" and r.choices[0].message.content == want.content

        with pytest.raises(openai.NotFoundError, match="serves tiny, all4, qd8"):
            client.completions.create(model="nope", prompt="x", max_tokens=1)
        status, body = raw(server, "GET", "/metrics", key=None)
        assert status == 200
        assert 'lora_requests_info{model_name="tiny",running_lora_adapters="",waiting_lora_adapters="",' \
               'max_lora="2"} 0' in body.decode()


def test_cli_lora_flags(setup, singles):
    from test_cli import run_cli

    base, folders = setup
    prompt = "The quick brown fox"
    want = singles["all4"].generate(prompt, SamplingParams(max_tokens=8, temperature=0))[0].text
    r = run_cli("generate", prompt, "--model", str(base), "--lora", str(folders["all4"]),
                "--temperature", "0", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = run_cli("serve", "--model", str(base), "--lora-modules", f"all4:{folders['all4']}")
    assert r.returncode == 2 and "NAME=DIR" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_adapters_on_a_quantized_base(setup, singles, quantization):
    """The adapter's update lands on the quantized base: off by the base's own quantization error only."""
    base, folders = setup
    multi = LLM(base, lora_adapters=folders, quantization=quantization, **SMALL)
    quant = LLM(base, quantization=quantization, **SMALL)
    quant_error = (quant.logits(IDS) - singles[None].logits(IDS)).abs().max()
    for name in folders:
        want = singles[name].logits(IDS)
        effect = (want - singles[None].logits(IDS)).abs().max()
        error = (multi.logits(IDS, adapter=name) - want).abs().max()
        # Without the update the error would be the adapter's whole effect (about 2, against ~0.04 / ~0.4).
        assert error < 1.5 * quant_error + 0.05 < effect, (name, error, effect, quant_error)
