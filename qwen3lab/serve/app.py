"""The FastAPI application: routes, API-key check, body-size limit, text that is not Unicode, errors
in the OpenAI shape.

Owns: wiring (``build_app``), the lifespan that starts and stops the engine driver, and the rule
that every failure, including validation errors and unknown paths, answers
``{"error": {"message", "type", "param", "code"}}`` with its status, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import APIError
from .routes import chat, completions, system, tokenize
from .state import ServerConfig, ServerState

log = logging.getLogger("qwen3lab.serve")


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(value, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON lets "\\ud800" through;
    no tokenizer can encode it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


class GateMiddleware:
    """API key on ``/v1/*`` (and ``/metrics`` with ``protect_metrics``) and a cap on request bodies, checked before any route runs (plain ASGI).

    The body is read here, up to the cap, and replayed to the app; later ``receive`` calls pass
    through so that the routes still see the client's disconnect.
    """

    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        guarded = scope["path"].startswith("/v1") or (self.config.protect_metrics and scope["path"] == "/metrics")
        if self.config.api_key and guarded:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), self.config.api_key.encode()):
                return await _send_error(send, APIError(401, "Incorrect or missing API key: send the header "
                                                             "'Authorization: Bearer <key>'", code="invalid_api_key"))
        limit = self.config.max_body_bytes
        too_big = APIError(413, f"request body is larger than this server's limit of {limit} bytes",
                           code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_error(send, too_big)
        chunks, size = [], 0
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left before sending its body
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return await _send_error(send, too_big)
                if not message.get("more_body"):
                    break
        body = b"".join(chunks)
        if _SURROGATE_ESCAPE.search(body):  # rare: only then is the body parsed twice
            try:
                where = _lone_surrogate(json.loads(body))
            except ValueError:
                where = None  # not JSON: the route says so
            if where:
                return await _send_error(send, APIError(400, f"{where}: the text holds a lone UTF-16 surrogate, which "
                                                             "is not Unicode; send valid UTF-8 text", where))
        replay = [{"type": "http.request", "body": body, "more_body": False}] if chunks else []

        async def replayed_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed_receive, send)


def _validation_error(_: Request, exc: RequestValidationError):
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return APIError(400, "the request body is not valid JSON").response()
    # Unions (prompt: str | list[...]) report one error per branch; name each field once.
    fields: dict[str, str] = {}
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        fields.setdefault(loc[0] if loc else "body", f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
    param = next(iter(fields), None)
    return APIError(400, "invalid request: " + "; ".join(fields.values()), param).response()


def _http_error(_: Request, exc: StarletteHTTPException):
    return APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None).response()


def _unexpected(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()


_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with what this server sends: its error shape under 400 (bad input, where FastAPI
    would declare a 422 it never sends), 401, 404, 413 and 503, and server-sent events from the two
    streaming routes."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version="1", summary=app.summary, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, methods in schema.get("paths", {}).items():
            for op in methods.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                if "requestBody" in op:
                    responses["400"] = {"description": "invalid request", **ref}
                    responses["413"] = {"description": "request body too large", **ref}
                if path.startswith("/v1"):
                    responses["401"] = {"description": "missing or wrong API key (with --api-key)", **ref}
                if path in ("/v1/chat/completions", "/v1/completions"):  # "stream": true answers in SSE
                    ok = responses.setdefault("200", {"description": "Successful Response"})
                    ok.setdefault("content", {})["text/event-stream"] = {"schema": {  # each event: one JSON chunk, or [DONE]
                        "type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}
                if "{" in path or "requestBody" in op:
                    responses["404"] = {"description": "unknown model", **ref}
                if path.startswith("/v1") and "requestBody" in op:
                    responses["503"] = {"description": "overloaded or shutting down", **ref}
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def build_app(llm, config: ServerConfig | None = None) -> FastAPI:
    """The app over an ``LLM``; its engine is driven by a background thread while the app runs."""
    config = config or ServerConfig()
    state = ServerState(llm, config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.driver.start()
        try:
            yield
        finally:
            state.driver.stop()

    app = FastAPI(title="qwen3lab", summary="OpenAI-compatible server of the qwen3lab engine", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: _openapi(app)
    app.state.qwen3lab = state
    for module in (chat, completions, system, tokenize):
        app.include_router(module.router)
    app.add_exception_handler(APIError, lambda _r, e: e.response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(GateMiddleware, config=config)
    return app
