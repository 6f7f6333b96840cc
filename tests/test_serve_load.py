"""The server under load: overload (503), disconnects and cancellation freeing KV blocks, concurrent
streams equal to each request alone, and one failing constrained request not hurting the others."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import openai
import pytest
from serve_fixtures import (  # noqa: F401 - fixtures are found by name
    NO_THINK, chat, client, folder, raw, reference, server, wait_idle,
)

from qwen3lab import SamplingParams
from qwen3lab.serve.driver import Done, EngineDriver
from qwen3lab.serve.errors import APIError
from qwen3lab.serve.metrics import Metrics


# -- cancellation, concurrency, isolation ------------------------------------------------------
def test_disconnect_cancels_stream_and_whole_request(client, server):
    engine = server.engine
    aborted = server.app.state.qwen3lab.metrics.requests["abort"]
    stream = chat(client, max_tokens=1200, temperature=0, stream=True, extra_body={"ignore_eos": True, **NO_THINK})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert engine.scheduler.running  # still generating
    stream.close()
    assert wait_idle(engine), "the engine kept generating after the client left"
    # A whole (non-streamed) request whose client times out is cancelled too.
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=1.0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1200, extra_body={"ignore_eos": True})
    assert wait_idle(engine), "the engine kept generating after the client left"
    assert server.app.state.qwen3lab.metrics.requests["abort"] == aborted + 2


def test_cancelled_stream_frees_its_kv_blocks(client, server):
    # Pool usage as /metrics reports it (kv_cache_usage_perc): blocks not in the free list. Blocks
    # that only the prefix cache remembers are in the free list (evictable), so they count as free.
    blocks = server.engine.blocks
    assert wait_idle(server.engine)
    start = blocks.num_free
    stream = chat(client, "Keep talking for a long time.", max_tokens=1200, temperature=0, stream=True,
                  extra_body={"ignore_eos": True, **NO_THINK})
    for i, _ in enumerate(stream):
        if i == 60:  # prompt plus ~60 tokens: at least 4 blocks of 16
            break
    assert server.engine.scheduler.running  # still generating
    assert start - blocks.num_free >= 4, (start, blocks.num_free)
    stream.close()
    assert wait_idle(server.engine), "the engine kept generating after the client left"
    assert blocks.num_free == start, f"{start - blocks.num_free} KV blocks leaked by the cancelled request"
    status, body = raw(server, "GET", "/metrics", key=None)
    usage = re.search(r"^qwen3lab:kv_cache_usage_perc\{[^}]*\} (\S+)$", body.decode(), re.M)
    assert status == 200 and float(usage.group(1)) == 1 - start / blocks.num_blocks


def test_concurrent_streams_equal_each_request_alone(client, server):
    """16 streaming greedy requests at once (one continuous batch) give what each gives alone."""
    n = 16
    go = threading.Barrier(n + 1)

    def stream_one(i):
        stream = chat(client, f"Request {i}: tell me about number {i * 7}.", max_tokens=16, temperature=0,
                      stream=True, stream_options={"include_usage": True},
                      extra_body={"ignore_eos": True, **NO_THINK})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.completion_tokens

    together, errors = {}, []

    def worker(i):
        try:
            go.wait(30)
            together[i] = stream_one(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.wait(30)
    peak = 0  # the largest running batch seen: the requests did share batches
    while any(t.is_alive() for t in threads):
        peak = max(peak, len(server.engine.scheduler.running))
        time.sleep(0.005)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(together) == list(range(n))
    assert peak >= n // 2, f"at most {peak} requests ran together"
    alone = {i: stream_one(i) for i in range(n)}
    assert all(together[i][1] == 16 and together[i][0] for i in range(n))
    assert together == alone


def test_concurrent_requests_all_complete(client):
    results, errors = {}, []

    def go(i):
        try:
            r = chat(client, f"Request number {i}", max_tokens=12, temperature=0.8, seed=i,
                     extra_body={"ignore_eos": True, **NO_THINK})
            results[i] = r.usage.completion_tokens
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results == {i: 12 for i in range(6)}


def test_failing_constraint_fails_only_its_request(reference):
    class Broken:
        def allowed_tokens(self, vocab_size):
            raise RuntimeError("grammar exploded")

        def advance(self, token_id):
            pass

    async def main():
        driver = EngineDriver(reference.engine, Metrics("tiny"))
        driver.start()
        try:
            ids = reference.tokenizer.encode("Hello")
            good = await driver.submit(ids, SamplingParams(max_tokens=5, temperature=0))
            bad = await driver.submit(ids, SamplingParams(max_tokens=5, temperature=0), constraint_factory=Broken)
            with pytest.raises(APIError) as e:
                while True:
                    await bad.next()
            assert e.value.status == 500 and "grammar exploded" in e.value.message
            item = None
            while not isinstance(item, Done):
                item = await good.next()
            return item
        finally:
            driver.stop()

    done = asyncio.run(main())
    assert len(done.output.outputs[0].token_ids) == 5 and not reference.engine.requests


def test_sigterm_ends_long_streams_after_the_shutdown_timeout(folder):
    """`qwen3lab serve --shutdown-timeout 1`: on SIGTERM a running stream gets one second more, then an
    error event and [DONE], and the process exits; it does not drain the whole generation."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    from serve_fixtures import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qwen3lab.cli", "serve", "--model", str(folder), "--port", str(port),
                             "--dtype", "float32", "--max-model-len", "4096", "--shutdown-timeout", "1",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        body = json.dumps({"model": str(folder), "prompt": "hi", "max_tokens": 3500, "stream": True,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        events = []
        with urllib.request.urlopen(req, timeout=60) as r:
            for line in r:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
                    if len(events) == 3:
                        sent = time.monotonic()
                        proc.send_signal(signal.SIGTERM)
        assert events[-1] == b"[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "shutting_down" and "shut down before this request finished" in error["message"]
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
        # uvicorn re-raises the captured signal once it has shut down: the exit status says SIGTERM.
        assert 0 < len(text) and proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - sent < 20
    finally:
        if proc.poll() is None:
            proc.kill()
