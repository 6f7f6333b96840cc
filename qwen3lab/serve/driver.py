"""The engine driver: one background thread owns the (not thread-safe) engine and runs its steps.

Owns: the handoff between the asyncio event loop and the engine thread. Coroutines submit and
abort requests through a thread-safe command queue; the thread adds them, steps the engine and
hands each request's deltas back to that request's asyncio queue with ``call_soon_threadsafe``.
Also owns the failure policy: a bad request fails at submit time (its ValueError becomes a 400),
a decoding constraint that raises fails only its own request, and any other exception in a step
fails the requests that were running, while the thread itself keeps going.
Leaves out: HTTP, prompts and output formatting (the routes).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine.outputs import RequestOutput, StreamDelta
from .errors import APIError, from_value_error
from .metrics import Metrics

log = logging.getLogger("qwen3lab.serve")


@dataclass
class Done:
    """The request finished: all its samples, with the prompt-cache statistics for ``usage``."""

    output: RequestOutput
    prompt_tokens: int
    cached_tokens: int


@dataclass
class _Live:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float
    first_token: bool = False
    last_token: dict[int, float] = field(default_factory=dict)


class _GuardedConstraint:
    """Wraps a decoding constraint so that an exception in it fails only its request."""

    def __init__(self, inner, on_error: Callable[[BaseException], None]):
        self.inner, self.on_error, self.failed = inner, on_error, False

    def allowed_tokens(self, vocab_size: int):
        if self.failed:
            return None
        try:
            return self.inner.allowed_tokens(vocab_size)
        except Exception as e:  # noqa: BLE001 - reported to the client of this request only
            self.failed = True
            self.on_error(e)
            return None

    def advance(self, token_id: int) -> None:
        if self.failed:
            return
        try:
            self.inner.advance(token_id)
        except Exception as e:  # noqa: BLE001
            self.failed = True
            self.on_error(e)


class RequestHandle:
    """The event-loop side of one request: ``async for item in handle`` yields deltas, then Done."""

    def __init__(self, driver: "EngineDriver", request_id: str, queue_: asyncio.Queue):
        self.driver, self.request_id, self.queue = driver, request_id, queue_
        self.finished = False

    async def next(self) -> list[StreamDelta] | Done:
        """The next batch of deltas or the final Done; raises APIError when the request failed."""
        item = await self.queue.get()
        if isinstance(item, APIError):
            self.finished = True
            raise item
        if isinstance(item, Done):
            self.finished = True
        return item

    def cancel(self) -> None:
        """Abort the request if it is still going (client gone); safe to call more than once."""
        if not self.finished:
            self.finished = True
            self.driver.abort(self.request_id)


class EngineDriver:
    def __init__(self, engine, metrics: Metrics, max_waiting: int = 256):
        self.engine, self.metrics, self.max_waiting = engine, metrics, max_waiting
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}
        self._failed: dict[str, BaseException] = {}
        self._stop = threading.Event()
        self.draining = False  # shutting down: new requests get 503
        self._thread = threading.Thread(target=self._run, name="qwen3lab-engine", daemon=True)

    # -- event-loop side -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def drain(self) -> None:
        """Refuse new requests from now on (the server is shutting down); running ones go on."""
        self.draining = True

    def fail_all(self, error: APIError) -> None:
        """End every live request with ``error`` (thread-safe)."""
        self._commands.put(lambda: [self._fail(rid, error) for rid in list(self._live)])

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(lambda: None)  # wake the thread
        self._thread.join(timeout=10)

    async def submit(self, prompt_token_ids: list[int], params, prompt: str | None = None,
                     constraint_factory=None, prefix: str = "req", adapter: str | None = None) -> RequestHandle:
        """Add a request on the engine thread; raises APIError (400 bad input, 503 overloaded or shutting
        down)."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future = loop.create_future()
        events: asyncio.Queue = asyncio.Queue()
        request_id = f"{prefix}-{uuid.uuid4().hex}"

        def resolve(error: BaseException | None) -> None:  # runs on the loop
            if accepted.cancelled():  # the client left while we queued: undo
                if error is None:
                    self.abort(request_id)
            elif error is None:
                accepted.set_result(None)
            else:
                accepted.set_exception(error)

        def add() -> None:  # runs on the engine thread
            try:
                waiting = self.engine.stats().num_waiting
                if waiting + params.n > self.max_waiting:  # every sample is a sequence that waits
                    raise APIError(503, f"the server is overloaded: {waiting} sequences are waiting; retry later",
                                   code="overloaded")
                factory = self._guard(request_id, constraint_factory) if constraint_factory else None
                self.engine.add_request(list(prompt_token_ids), params, request_id=request_id, prompt=prompt,
                                        constraint_factory=factory, adapter=adapter)
                self._live[request_id] = _Live(loop, events, time.monotonic())
                self.metrics.prompt_tokens += len(prompt_token_ids)
                error = None
            except APIError as e:
                error = e
            except ValueError as e:
                error = from_value_error(e)
            except Exception as e:  # noqa: BLE001 - e.g. a constraint factory that cannot build
                log.error("adding request %s failed:\n%s", request_id, traceback.format_exc())
                error = APIError(500, f"could not start the request: {type(e).__name__}: {e}")
            loop.call_soon_threadsafe(resolve, error)

        self._commands.put(add)
        await accepted
        return RequestHandle(self, request_id, events)

    def abort(self, request_id: str) -> None:
        self._commands.put(lambda: self._abort(request_id))

    # -- engine thread ---------------------------------------------------------------------
    def _guard(self, request_id: str, factory):
        def on_error(e: BaseException) -> None:
            log.error("constraint of %s failed: %s", request_id, e)
            self._failed[request_id] = e

        return lambda: _GuardedConstraint(factory(), on_error)

    def _abort(self, request_id: str) -> None:
        if self._live.pop(request_id, None) is not None and request_id in self.engine.requests:
            self.engine.abort(request_id)
            self.engine.pop(request_id)
            self.metrics.finished("abort")

    def _fail(self, request_id: str, error: APIError) -> None:
        live = self._live.pop(request_id, None)
        if request_id in self.engine.requests:
            self.engine.abort(request_id)
            self.engine.pop(request_id)
        if live is not None:
            self.metrics.finished("error")
            self._send(live, error)

    @staticmethod
    def _send(live: _Live, item: Any) -> None:
        try:
            live.loop.call_soon_threadsafe(live.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: server shutting down
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = self.engine.has_unfinished()
            try:
                command = self._commands.get_nowait() if busy else self._commands.get(timeout=0.5)
            except queue.Empty:
                command = None
            while command is not None:
                try:
                    command()
                except Exception:  # noqa: BLE001 - a failed abort must not stop the engine thread
                    log.error("engine command failed:\n%s", traceback.format_exc())
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if self._stop.is_set() or not self.engine.has_unfinished():
                continue
            try:
                deltas = self.engine.step()
            except Exception as e:  # noqa: BLE001 - fail what was running, keep serving
                log.error("engine step failed:\n%s", traceback.format_exc())
                # The running requests, or the waiting ones when the step failed before running any.
                for rid in self.engine.running_request_ids() or self.engine.waiting_request_ids():
                    self._fail(rid, APIError(500, f"the engine failed on this request: {type(e).__name__}: {e}"))
                continue
            self._dispatch(deltas)

    def _dispatch(self, deltas: list[StreamDelta]) -> None:
        now = time.monotonic()
        by_request: dict[str, list[StreamDelta]] = {}
        for d in deltas:
            by_request.setdefault(d.request_id, []).append(d)
        for rid, items in by_request.items():
            live = self._live.get(rid)
            if live is None:
                continue
            for d in items:
                self.metrics.generation_tokens += len(d.token_ids)
                if not live.first_token:
                    live.first_token = True
                    self.metrics.ttft.observe(now - live.arrival)
                if d.index in live.last_token:
                    self.metrics.itl.observe(now - live.last_token[d.index])
                live.last_token[d.index] = now
            self._send(live, items)
        for rid, error in list(self._failed.items()):
            del self._failed[rid]
            self._fail(rid, APIError(500, f"decoding constraint failed: {type(error).__name__}: {error}"))
        for rid in by_request:
            if rid in self._live and self.engine.is_finished(rid):
                live = self._live.pop(rid)
                out = self.engine.pop(rid)
                self.metrics.finished(out.outputs[0].finish_reason)
                self._send(live, Done(out, len(out.prompt_token_ids), out.outputs[0].num_cached_tokens))
