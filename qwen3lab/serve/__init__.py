"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over the engine, plus a browser chat page.

``build_app(llm, ServerConfig(...))`` returns the app; ``qwen3lab serve`` runs it with uvicorn.
Layout: ``protocol`` (request models), ``driver`` (the engine thread), ``chat_prompt`` /
``chat_output`` (chat in and out), ``routes/`` (endpoints), ``metrics``, ``static/chat.html``.
"""

from .app import build_app
from .state import ServerConfig

__all__ = ["build_app", "ServerConfig"]
