"""Graceful shutdown with a bound: SIGTERM (or Ctrl-C) stops new requests at once, lets running ones
finish for ``shutdown_timeout`` seconds, then ends every one still going with an error (a stream gets
an error event and ``[DONE]``, a waiting whole response a 503), so the process exits in bounded time.

uvicorn alone waits for every open stream to end (minutes with long generations), or with its own
timeout cuts the connections without a word to the clients.
"""

from __future__ import annotations

import logging
import threading

import uvicorn

from .errors import APIError

log = logging.getLogger("qwen3lab.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, driver, shutdown_timeout: float):
        # uvicorn's own timeout is the backstop, a little later than ours.
        config.timeout_graceful_shutdown = shutdown_timeout + 5
        super().__init__(config)
        self.driver, self.shutdown_timeout = driver, shutdown_timeout
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self._timer is None:
            log.info("shutting down: running requests get %.0f s to finish", self.shutdown_timeout)
            self.driver.drain()
            self._timer = threading.Timer(self.shutdown_timeout, self.driver.fail_all,
                                          (APIError(503, "the server shut down before this request finished",
                                                    code="shutting_down"),))
            self._timer.daemon = True
            self._timer.start()
