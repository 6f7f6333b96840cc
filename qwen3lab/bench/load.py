"""Concurrent streaming clients against an OpenAI-compatible server, and the statistics of what they saw.

Owns: driving ``/v1/chat/completions`` with ``concurrency`` streaming clients (the official
``openai`` client), recording when each text-bearing chunk arrives, and turning those timestamps
into throughput, TTFT and inter-token-latency percentiles. Leaves out: starting servers
(``servers.py``) and the comparison table (``serving.py``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# Fixed prompts of varied length; request i gets PROMPTS[i % len(PROMPTS)], so both servers see the same set.
PROMPTS = [
    "Name three colors.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU cache is in two sentences.",
    "List the planets of the solar system in order from the sun.",
    "Give me a short recipe for pancakes.",
    "Why is the sky blue?",
    "Translate 'good morning, how are you?' into Spanish and German.",
    "Summarise the plot of Romeo and Juliet in a few lines.",
    "What are the benefits of regular exercise? Answer with a bulleted list.",
    "Describe a cat to someone who has never seen one.",
    "How do I reverse a list in Python?",
    "Suggest a name for a small bakery in a mountain village.",
    "What is the difference between weather and climate?",
    "Write the opening sentence of a mystery novel set on a train.",
    "Count from one to ten in words.",
]


@dataclass
class RequestRecord:
    """What one streamed request saw, in seconds on the client's monotonic clock."""

    start: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    end: float = 0.0
    tokens: int = 0  # completion tokens (usage when the server sends it)
    finish_reason: str | None = None
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks, as numpy's default; None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(records: list[RequestRecord], max_tokens: int) -> dict:
    """Throughput over the level's wall time, and latency percentiles in milliseconds.

    TTFT: request sent -> first chunk with text. ITL: gaps between consecutive text chunks of a
    request, pooled over all requests. TPOT: per request, (last chunk - first chunk) / (tokens - 1),
    which does not depend on how many tokens a server packs into one chunk.
    """
    ok = [r for r in records if r.error is None and r.chunk_times]
    out: dict = {"requests": len(records), "failed": len(records) - len(ok)}
    if not ok:
        return out
    wall = max(r.end for r in ok) - min(r.start for r in records)
    tokens = sum(r.tokens for r in ok)
    ttft = [1e3 * (r.chunk_times[0] - r.start) for r in ok]
    itl = [1e3 * (b - a) for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tpot = [1e3 * (r.chunk_times[-1] - r.chunk_times[0]) / (r.tokens - 1) for r in ok if r.tokens > 1]
    out.update(duration_s=wall, output_tokens=tokens, output_tok_s=tokens / wall, req_s=len(ok) / wall,
               ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
               itl_p50_ms=percentile(itl, 50), itl_p99_ms=percentile(itl, 99), tpot_p50_ms=percentile(tpot, 50),
               tokens_per_chunk=tokens / sum(len(r.chunk_times) for r in ok),
               short_requests=sum(r.tokens != max_tokens for r in ok))
    return out


def _text(delta) -> bool:
    """Whether a chat delta carries generated text (answer, reasoning or a tool call)."""
    extra = getattr(delta, "model_extra", None) or {}
    return bool(delta.content or extra.get("reasoning_content") or delta.tool_calls)


async def _one(client, model: str, prompt: str, max_tokens: int) -> RequestRecord:
    rec = RequestRecord(start=time.perf_counter())
    try:
        # Greedy and exactly max_tokens on both servers: min_tokens (both) masks EOS until then,
        # ignore_eos (ours; llama.cpp ignores the field) lets generation run past it as well.
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"min_tokens": max_tokens, "ignore_eos": True})
        chunks = 0
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                rec.tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if _text(choice.delta):
                    rec.chunk_times.append(now)
                    chunks += 1
                rec.finish_reason = choice.finish_reason or rec.finish_reason
        if not rec.tokens:  # llama_cpp.server streams no usage: a "length" finish means max_tokens tokens
            rec.tokens = max_tokens if rec.finish_reason == "length" else chunks
    except Exception as e:  # one failed request is reported, the level goes on
        rec.error = f"{type(e).__name__}: {e}"
    rec.end = time.perf_counter()
    return rec


async def _level(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int,
                 first_prompt: int) -> list[RequestRecord]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=1800)
    next_index = iter(range(requests))
    records: list[RequestRecord] = []

    async def worker():
        for i in next_index:  # shared iterator: each worker takes the next request when it is free
            records.append(await _one(client, model, PROMPTS[(first_prompt + i) % len(PROMPTS)], max_tokens))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return records


def run_level(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int,
              first_prompt: int = 0) -> list[RequestRecord]:
    """``requests`` streamed chat requests, at most ``concurrency`` in flight at once."""
    return asyncio.run(_level(base_url, model, concurrency, requests, max_tokens, first_prompt))
