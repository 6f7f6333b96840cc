"""One benchmark measurement, run in its own process so that peak memory is its own.

``python -m qwen3lab.bench.measure KIND FOLDER_OR_FILE [--quantization Q] ...`` prints one JSON
object: prefill tok/s (one prompt), decode tok/s (batch 1), aggregate decode tok/s at larger batches,
peak RSS (of the whole process, and while decoding: after load and prefill) and, for our engine, the bytes of weights each decode step reads. KIND is ``ours``,
``transformers`` or ``llama.cpp``; all three get the same token ids.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def reset_peak_rss() -> None:
    """Start a new high-water mark of resident memory (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the decode peak below is the whole process's peak: never lower than the truth


def peak_rss_since_reset_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return peak_rss_gb()


def prompt_ids(n: int, seed: int, vocab: int = 151000) -> list[int]:
    return torch.randint(1000, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def machine_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth with the process's threads: the best of a few full passes over a large buffer."""
    a = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best / 1e9


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step streams: every weight except embedding rows (unless the head is the embedding)."""
    embed = model.model.embed_tokens.weight
    head_is_embed = getattr(model.lm_head, "weight", None) is embed
    total = 0
    seen = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or (t is embed and not head_is_embed) or name.endswith("inv_freq"):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    for m in model.modules():  # kernel-specific copies (int4 CPU layouts, scales and zeros) are plain attributes
        for attr in ("cpu_packed", "kernel_scales", "kernel_zeros", "amx_weight", "amx_scales", "amx_zeros"):
            t = getattr(m, attr, None)
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def measure_ours(path: str, quantization: str | None, prompt_len: int, decode_tokens: int, batches: list[int],
                 batch_tokens: int, verify_k: int) -> dict:
    from qwen3lab import LLM, SamplingParams

    t = time.perf_counter()
    llm = LLM(path, dtype="bfloat16", quantization=quantization, max_num_batched_tokens=prompt_len,
              max_num_seqs=max(batches + [1]), kv_cache_memory_gb=2.0, enable_prefix_caching=False)
    load_s = time.perf_counter() - t
    greedy = dict(temperature=0.0, ignore_eos=True)
    llm.generate([prompt_ids(16, 0)], SamplingParams(max_tokens=4, **greedy))  # warm-up
    t = time.perf_counter()
    llm.generate([prompt_ids(prompt_len, 1)], SamplingParams(max_tokens=1, **greedy))
    prefill = prompt_len / (time.perf_counter() - t)
    # The reported figure is peak memory while decoding: loading (which reads the checkpoint) and the
    # 512-token prefill are behind us, but whatever they left allocated still counts.
    reset_peak_rss()
    stamps = [time.perf_counter() for _ in llm.stream(prompt_ids(32, 2), SamplingParams(max_tokens=decode_tokens,
                                                                                          **greedy))]
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    # Batch-1 decoding only, the window every engine is measured in (llama.cpp has no batch runs);
    # the batch runs (their prompts' prefill included) get their own figure.
    result = dict(load_s=load_s, prefill_tok_s=prefill, decode_tok_s=decode, decode_peak_rss_gb=peak_rss_since_reset_gb(),
                  weight_bytes_per_token=decode_weight_bytes(llm.model))
    reset_peak_rss()
    for b in batches:
        result[f"decode_b{b}_tok_s"] = _batch_decode(llm, b, batch_tokens)
    if batches:
        result["batch_peak_rss_gb"] = peak_rss_since_reset_gb()
    if verify_k:
        result["verify_cost"] = _verify_cost(llm, verify_k)
    return result


def _batch_decode(llm, batch: int, tokens: int) -> float:
    """Aggregate decode tok/s of ``batch`` sequences decoding together (prefill excluded)."""
    from qwen3lab import SamplingParams

    eng = llm.engine
    p = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    ids = [eng.add_request(prompt_ids(32, 100 + i), p) for i in range(batch)]
    while any(s.in_prefill or not s.output_token_ids for r in ids for s in eng.requests[r]):
        eng.step()
    done_before = sum(len(s.output_token_ids) for r in ids for s in eng.requests[r])
    t = time.perf_counter()
    while eng.has_unfinished():
        eng.step()
    elapsed = time.perf_counter() - t
    generated = sum(len(eng.pop(r).token_ids) for r in ids) - done_before
    return generated / elapsed


@torch.inference_mode()
def _verify_cost(llm, max_k: int, repeats: int = 3) -> dict[int, float]:
    """Time of one target forward over k+1 tokens at a decode position, relative to one token."""
    from qwen3lab.engine.sequence import Sequence
    from qwen3lab.sampling import SamplingParams

    cache, runner = llm.engine.cache, llm.engine.runner
    seq = Sequence("verify", 0, prompt_ids(256, 3), SamplingParams(max_tokens=64), 64)
    blocks = llm.engine.new_blocks()
    blocks.allocate(seq, 256 + max_k + 1)
    meta = runner.metadata([256], [256], [seq])
    llm.model(torch.tensor(seq.prompt_token_ids), meta, cache)
    llm.engine.blocks.forget_cached()  # written outside the engine's block manager
    times = {k: float("inf") for k in range(max_k + 1)}
    metas = {k: runner.metadata([k + 1], [256 + k + 1], [seq]) for k in times}
    # Repeats outermost: the host's speed drifts within minutes, so every k samples the same moments.
    for _ in range(repeats):
        for k in times:
            ids = torch.tensor(prompt_ids(k + 1, 4))
            t = time.perf_counter()
            llm.model.compute_logits(llm.model(ids, metas[k], cache))
            times[k] = min(times[k], time.perf_counter() - t)
    return {k: times[k] / times[0] for k in range(1, max_k + 1)}


def measure_transformers(path: str, prompt_len: int, decode_tokens: int, batches: list[int],
                         batch_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, DynamicCache

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t

    @torch.inference_mode()
    def run(ids: torch.Tensor, steps: int) -> tuple[float, float]:
        cache = DynamicCache()
        t0 = time.perf_counter()
        out = model(ids, past_key_values=cache, use_cache=True)
        t1 = time.perf_counter()
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            out = model(tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        return t1 - t0, time.perf_counter() - t1

    run(torch.tensor([prompt_ids(16, 0)]), 2)  # warm-up
    pre, _ = run(torch.tensor([prompt_ids(prompt_len, 1)]), 0)
    reset_peak_rss()
    _, dec = run(torch.tensor([prompt_ids(32, 2)]), decode_tokens - 1)
    result = dict(load_s=load_s, prefill_tok_s=prompt_len / pre, decode_tok_s=(decode_tokens - 1) / dec,
                  decode_peak_rss_gb=peak_rss_since_reset_gb())
    reset_peak_rss()
    for b in batches:
        _, dec = run(torch.tensor([prompt_ids(32, 100 + i) for i in range(b)]), batch_tokens - 1)
        result[f"decode_b{b}_tok_s"] = b * (batch_tokens - 1) / dec
    if batches:
        result["batch_peak_rss_gb"] = peak_rss_since_reset_gb()
    return result


def measure_llama_cpp(path: str, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=2048, n_batch=prompt_len, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    load_s = time.perf_counter() - t
    llm.eval(prompt_ids(16, 0))
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt_ids(prompt_len, 1))
    prefill = prompt_len / (time.perf_counter() - t)
    llm.reset()
    reset_peak_rss()
    llm.eval(prompt_ids(32, 2))
    t = time.perf_counter()
    for tok in prompt_ids(decode_tokens - 1, 5):  # decode cost does not depend on which token comes next
        llm.eval([tok])
    decode = (decode_tokens - 1) / (time.perf_counter() - t)
    return dict(load_s=load_s, prefill_tok_s=prefill, decode_tok_s=decode, decode_peak_rss_gb=peak_rss_since_reset_gb())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["ours", "transformers", "llama.cpp", "bandwidth"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--batches", default="4,8")
    ap.add_argument("--batch-tokens", type=int, default=32)
    ap.add_argument("--verify-k", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",") if b]
    if a.kind == "bandwidth":
        result = dict(read_gb_s=machine_bandwidth_gbs())
    elif a.kind == "ours":
        result = measure_ours(a.path, a.quantization, a.prompt_len, a.decode_tokens, batches, a.batch_tokens,
                              a.verify_k)
    elif a.kind == "transformers":
        result = measure_transformers(a.path, a.prompt_len, a.decode_tokens, batches, a.batch_tokens)
    else:
        result = measure_llama_cpp(a.path, a.prompt_len, a.decode_tokens, a.threads)
    result["peak_rss_gb"] = peak_rss_gb()
    result["threads"] = a.threads
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
