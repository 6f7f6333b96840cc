"""``GET /v1/models`` (and one by id), ``/health``, ``/metrics`` and the browser chat page at ``/``."""

from __future__ import annotations

import time
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from ..state import get_state

router = APIRouter()
_STARTED = int(time.time())


def _cards(state) -> list[dict]:
    card = {"object": "model", "created": _STARTED, "owned_by": "qwen3lab",
            "max_model_len": state.llm.engine.max_model_len}
    base = [{"id": name, "root": str(state.llm.model_path), "parent": None, **card}
            for name in state.config.served_model_names]
    # Adapters as vLLM lists them: root is the adapter folder, parent the base model's name.
    adapters = [{"id": name, "root": path, "parent": state.model_name, **card} for name, path in state.adapters.items()]
    return base + adapters


@router.get("/v1/models")
async def models(request: Request):
    return {"object": "list", "data": _cards(get_state(request))}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request):
    """One model card; ids may hold slashes (a served name such as ``Qwen/Qwen3-4B`` or a path)."""
    state = get_state(request)
    state.check_model(model_id)
    return next(c for c in _cards(state) if c["id"] == model_id)


@router.get("/health", response_class=PlainTextResponse, responses={503: {"description": "the engine thread stopped"}})
async def health(request: Request):
    state = get_state(request)
    alive = state.driver.alive
    return PlainTextResponse("ok" if alive else "engine thread stopped", status_code=200 if alive else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request):
    state = get_state(request)
    return PlainTextResponse(state.metrics.render(state.llm.engine.stats()),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", response_class=HTMLResponse)
async def chat_page():
    return HTMLResponse(resources.files("qwen3lab.serve").joinpath("static/chat.html").read_text("utf-8"))
