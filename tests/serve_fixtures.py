"""Shared pieces of the server tests: a uvicorn thread, a tiny random Qwen3 served by it, helpers.

Imported by the test_serve*.py modules; each module that imports the fixtures gets its own server."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import uvicorn
from checkpoints import save_reference

from qwen3lab import LLM
from qwen3lab.serve import ServerConfig, build_app

KEY = "test-key"
needs_structured = pytest.mark.skipif(importlib.util.find_spec("qwen3lab.structured") is None,
                                      reason="qwen3lab.structured (constrained decoding) is not in this build")
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}},
                   "required": ["zone"], "additionalProperties": False}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a thread of this process, so tests can also look at the engine behind it."""

    def __init__(self, app):
        self.app, self.port = app, free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def folder(scratch):
    path = scratch("tiny-qwen3")
    save_reference(path, "qwen3", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return path


@pytest.fixture(scope="module")
def server(folder):
    llm = LLM(str(folder), dtype="float32", max_model_len=2048, kv_cache_memory_gb=0.25)
    config = ServerConfig(served_model_names=["tiny"], api_key=KEY, max_tokens_limit=1500, max_body_bytes=2**20)
    with ServerThread(build_app(llm, config)) as s:
        s.llm, s.engine = llm, llm.engine
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(folder):
    """A second LLM on the same weights, driven directly (the server's engine belongs to its thread)."""
    return LLM(str(folder), dtype="float32", max_model_len=2048, kv_cache_memory_gb=0.25)


def chat(client, content="Hello there", **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def raw(server, method: str, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_idle(engine, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.scheduler.running and not engine.scheduler.waiting and not engine.requests:
            return True
        time.sleep(0.05)
    return False
