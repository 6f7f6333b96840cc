"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Owns: the ``APIError`` exception that handlers and the engine driver raise, the helpers for the
common cases, and the JSON response built from it. Leaves out: where errors are caught (``app.py``).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

# OpenAI's error "type" per status, as the official client maps them back to exception classes.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 500: "server_error", 503: "overloaded_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def from_value_error(e: ValueError) -> APIError:
    """Engine and SamplingParams ValueErrors are the client's fault: 400, naming the field when we can."""
    msg = str(e)
    code = "context_length_exceeded" if "context window" in msg else None
    param = None
    if msg.startswith("SamplingParams."):
        param = msg.split(".", 1)[1].split(" ", 1)[0]
    elif code:
        param = "messages"
    return APIError(400, msg, param, code)


CHARS_PER_TOKEN_PROBE = 8  # characters read per context token before a too-long prompt is declared


def encode_bounded(tokenizer, text: str, limit: int, param: str, add_special_tokens: bool = True) -> list[int]:
    """``tokenizer.encode(text)``, refusing before the whole text is tokenised when it cannot fit ``limit``
    tokens: if its first ``8 x limit`` characters already hold more than ``limit`` tokens, so does the
    whole (a 8 MiB body is then refused in milliseconds, not after seconds of tokenising)."""
    head = CHARS_PER_TOKEN_PROBE * limit
    if len(text) > head and len(tokenizer.encode(text[:head], add_special_tokens=False)) > limit:
        raise APIError(400, f"{param} has more than {limit} tokens, more than the context window of "
                            f"{limit} tokens; shorten it", param, "context_length_exceeded")
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)
