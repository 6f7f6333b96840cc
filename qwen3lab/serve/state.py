"""Server settings and the objects the routes share: the LLM, the engine driver, the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from .driver import EngineDriver
from .errors import APIError
from .metrics import Metrics


@dataclass(frozen=True)
class ServerConfig:
    served_model_names: list[str] = field(default_factory=lambda: ["qwen3lab"])
    api_key: str | None = None
    max_tokens_limit: int | None = None  # None: up to the context window
    max_body_bytes: int = 8 * 2**20
    max_waiting: int = 256  # sequences in the waiting queue before new requests get 503
    protect_metrics: bool = False  # /metrics needs the API key too (open by default, as vLLM's)
    thinking_budget: int | None = None  # default reasoning budget of thinking-mode chat requests
    max_n: int = 16  # sequences one request may start (n, times the prompts of a completions batch)


class ServerState:
    def __init__(self, llm, config: ServerConfig):
        self.llm, self.config = llm, config
        self.metrics = Metrics(config.served_model_names[0])
        self.driver = EngineDriver(llm.engine, self.metrics, config.max_waiting)
        # LoRA adapters loaded with LLM(lora_adapters=...) are served under their own names (as vLLM's
        # --lora-modules): a request for one runs the base model with that adapter.
        bank = getattr(llm.model, "lora_bank", None)
        self.adapters: dict[str, str] = dict(zip(bank.names, bank.paths)) if bank is not None else {}
        clash = set(self.adapters) & set(config.served_model_names)
        if clash:
            raise ValueError(f"LoRA adapter name(s) {sorted(clash)} clash with the served model name; rename them")

    @property
    def model_name(self) -> str:
        return self.config.served_model_names[0]

    def check_model(self, name: str | None) -> str:
        """The name to answer with; 404 in OpenAI's shape for a model this server does not serve."""
        if name is None or name in self.config.served_model_names or name in self.adapters:
            return name or self.model_name
        raise APIError(404, f"The model `{name}` does not exist. This server serves "
                            f"{', '.join([*self.config.served_model_names, *self.adapters])}.", "model",
                       "model_not_found")

    def check_sequences(self, n: int, prompts: int = 1) -> None:
        """400 when one request would start more than ``--max-n`` sequences (its n times its prompts)."""
        if n * prompts > self.config.max_n:
            what = f"n={n}" if prompts == 1 else f"n={n} for each of {prompts} prompts ({n * prompts} sequences)"
            raise APIError(400, f"{what} is more than this server's limit of {self.config.max_n} sequences per "
                                "request (--max-n)", "n", "invalid_value")

    def adapter(self, model: str) -> str | None:
        """The LoRA adapter a (checked) model name selects, or None for the base model."""
        return model if model in self.adapters else None


def get_state(request: Request) -> ServerState:
    return request.app.state.qwen3lab
