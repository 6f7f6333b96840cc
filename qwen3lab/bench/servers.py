"""Start an OpenAI-compatible server as a subprocess on a free loopback port, wait for it, stop it.

Owns: the command lines of our server (``qwen3lab serve``) and of llama-cpp-python's
(``python -m llama_cpp.server``) for the serving benchmark, with the same thread count, and
readiness by polling ``/v1/models``. Leaves out: load generation (``load.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# llama-cpp-python[server]'s extras, pinned in the `bench` extra of pyproject.toml.
LLAMA_SERVER_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_missing() -> str | None:
    """Why ``python -m llama_cpp.server`` cannot run here, or None when it can."""
    missing = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"llama.cpp's server is not installed (missing {', '.join(missing)}): pip install -e '.[bench]' "
            "(llama-cpp-python is built from source, minutes)")


def ours_command(model: str, port: int, max_num_seqs: int, ctx: int, kv_cache_gb: float) -> list[str]:
    return [sys.executable, "-m", "qwen3lab.cli", "serve", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(ctx),
            "--kv-cache-memory-gb", str(kv_cache_gb), "--log-level", "warning"]


def llama_command(model: str, port: int, threads: int, ctx: int) -> list[str]:
    # llama_cpp.server runs one request at a time behind a lock, so n_ctx covers one sequence.
    # interrupt_requests (on by default) would end the running stream whenever another request
    # queues, which under concurrent load cuts every stream short: turn it off to let them queue.
    return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
            "--n_batch", "512", "--interrupt_requests", "False", "--verbose", "False"]


class Server:
    """A server subprocess; ``with Server(...) as s:`` waits until ``s.url`` answers and stops it after."""

    def __init__(self, name: str, command: list[str], port: int, threads: int, startup_timeout: float = 600):
        self.name, self.command, self.port = name, command, port
        self.url = f"http://127.0.0.1:{port}"
        self.startup_timeout = startup_timeout
        # torch (ours) reads OMP_NUM_THREADS at start; llama.cpp takes --n_threads and ignores it.
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None

    def __enter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     stdin=subprocess.DEVNULL)
        try:
            self.model_id = self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with code {self.proc.returncode} while starting:\n"
                                   f"{self.log_tail()}\n(command: {' '.join(self.command)})")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as r:
                    return json.loads(r.read())["data"][0]["id"]
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} server did not answer {self.url}/v1/models within "
                           f"{self.startup_timeout:.0f} s; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if exc and exc[0] is not None:  # keep the log of a failed run for the user to read
            print(f"[bench] {self.name} server log kept at {self.log.name}", file=sys.stderr)
        else:
            Path(self.log.name).unlink(missing_ok=True)
