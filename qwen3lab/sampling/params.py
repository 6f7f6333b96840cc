"""Per-request sampling settings, with the checkpoint's generation_config.json as defaults.

Field names and meanings follow vLLM's ``SamplingParams`` so that users and the OpenAI server map
onto them one to one. ``None`` means "use the checkpoint default" until ``resolve`` fills it in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import GenerationDefaults


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = None  # None: until eos or the context window is full; 0 with prompt_logprobs: score only
    min_tokens: int = 0
    temperature: float | None = None  # 0 means greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: no limit
    min_p: float | None = None
    repetition_penalty: float | None = None  # > 1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0  # OpenAI semantics, on output tokens only
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the sampled token's; k: plus the top k
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (vLLM's field)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Reasoning tokens allowed before the engine closes the thought (the Qwen team's early-stopping
    # phrase, then </think>) so that the answer follows; None: no limit. For thinking-mode prompts.
    thinking_budget: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        def bad(name: str, rule: str):
            raise ValueError(f"SamplingParams.{name} {rule}, got {getattr(self, name)!r}")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "must be an integer >= 1")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 0 or (
                self.max_tokens == 0 and self.prompt_logprobs is None)):
            bad("max_tokens", "must be an integer >= 1, or 0 with prompt_logprobs to score the prompt only "
                "(None: no limit)")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            bad("min_tokens", "must be >= 0 and <= max_tokens")
        if self.temperature is not None and not (0.0 <= self.temperature <= 100.0):
            bad("temperature", "must be in [0, 100] (0 means greedy)")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            bad("top_p", "must be in (0, 1]")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < -1):
            bad("top_k", "must be an integer >= 0 (0 or -1 disables it)")
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            bad("min_p", "must be in [0, 1]")
        if self.repetition_penalty is not None and not (0.0 < self.repetition_penalty <= 10.0):
            bad("repetition_penalty", "must be in (0, 10]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not (-2.0 <= getattr(self, name) <= 2.0):
                bad(name, "must be in [-2, 2]")
        if self.logprobs is not None and not (0 <= self.logprobs <= 20):
            bad("logprobs", "must be in [0, 20]")
        if self.prompt_logprobs is not None and not (0 <= self.prompt_logprobs <= 20):
            bad("prompt_logprobs", "must be in [0, 20]")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        if self.thinking_budget is not None and (isinstance(self.thinking_budget, bool)
                                                 or not isinstance(self.thinking_budget, int) or self.thinking_budget < 0):
            bad("thinking_budget", "must be an integer >= 0 (None: no limit)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")

    def resolve(self, defaults: GenerationDefaults | None) -> "SamplingParams":
        """Fill every None from the checkpoint defaults, then from neutral values."""
        d = defaults or GenerationDefaults()

        def pick(value, default, neutral):
            return value if value is not None else (default if default is not None else neutral)

        return replace(
            self,
            temperature=pick(self.temperature, d.temperature, 1.0),
            top_p=pick(self.top_p, d.top_p, 1.0),
            top_k=pick(self.top_k, d.top_k, 0),
            min_p=pick(self.min_p, d.min_p, 0.0),
            repetition_penalty=pick(self.repetition_penalty, d.repetition_penalty, 1.0),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature == 0.0
