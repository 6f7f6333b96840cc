"""Request bodies of the OpenAI-compatible API as pydantic models, and their mapping to SamplingParams.

Owns: which fields each endpoint accepts (OpenAI's names plus vLLM's extras: top_k, min_p,
repetition_penalty, ...) and the translation into ``SamplingParams``. Unknown fields are ignored,
as OpenAI clients send more than we use. Responses are plain dicts built by the routes.
Value checks stay in ``SamplingParams`` so that the Python API and the server agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..sampling import SamplingParams
from .errors import bad_request


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling_params(self, max_tokens: int | None, logprobs: int | None, max_tokens_limit: int | None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams for this request; raises APIError 400 naming the bad field. ``--max-tokens-limit``
        caps what a client asks for (as vLLM's max_model_len caps it), so long-output clients still run."""
        if max_tokens is None or (max_tokens_limit is not None and max_tokens > max_tokens_limit):
            max_tokens = max_tokens_limit
        try:
            return SamplingParams(
                n=self.n, max_tokens=max_tokens, min_tokens=self.min_tokens, temperature=self.temperature,
                top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                repetition_penalty=self.repetition_penalty,
                presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
                seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                logprobs=logprobs, prompt_logprobs=prompt_logprobs, skip_special_tokens=self.skip_special_tokens,
                include_stop_str_in_output=self.include_stop_str_in_output)
        except ValueError as e:  # "SamplingParams.temperature must be ..." -> param "temperature"
            field = str(e).split(".", 1)[1].split(" ", 1)[0] if str(e).startswith("SamplingParams.") else None
            raise bad_request(str(e).removeprefix("SamplingParams."), field) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# reasoning_effort as thinking budgets (tokens); "minimal" closes the thought at once.
REASONING_EFFORT = {"minimal": 0, "low": 1024, "medium": 4096, "high": 16384}


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # Thinking budget: vLLM's thinking_token_budget spelling and Anthropic's budget_tokens idea as
    # thinking_budget / max_thinking_tokens; OpenAI's reasoning_effort maps onto it (REASONING_EFFORT).
    thinking_budget: int | None = None
    max_thinking_tokens: int | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None

    def thinking_budget_tokens(self, default: int | None) -> int | None:
        """The budget this request asks for (explicit, then reasoning_effort, then the server's default)."""
        for name in ("thinking_budget", "max_thinking_tokens"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or value < 0:
                    raise bad_request(f"{name} must be an integer >= 0", name)
                return value
        if self.reasoning_effort is not None:
            return REASONING_EFFORT[self.reasoning_effort]
        return default

    def to_sampling_params(self, max_tokens_limit: int | None) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.sampling_params(self.max_completion_tokens or self.max_tokens, logprobs, max_tokens_limit)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False  # the prompt comes back before the completion, with its logprobs when asked
    prompt_logprobs: int | None = None  # vLLM's field: per prompt token, in choices[i].prompt_logprobs
    suffix: str | None = None

    def to_sampling_params(self, max_tokens_limit: int | None) -> SamplingParams:
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if self.max_tokens == 0 and not self.echo and self.prompt_logprobs is None:
            raise bad_request("max_tokens 0 generates nothing: give echo with logprobs, or prompt_logprobs, to "
                              "score the prompt", "max_tokens")
        # OpenAI's legacy default is 16 tokens; keep it so plain clients get a short completion.
        default = min(16, max_tokens_limit or 16)
        prompt_k = self.prompt_logprobs
        if self.echo and self.logprobs is not None:
            prompt_k = max(prompt_k or 0, self.logprobs)
        elif self.echo and self.max_tokens == 0 and prompt_k is None:
            prompt_k = 0  # the prompt back, nothing generated: a scoring request without its logprobs
        return self.sampling_params(self.max_tokens if self.max_tokens is not None else default, self.logprobs,
                                    max_tokens_limit, prompt_k)


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt, or chat messages rendered with the checkpoint's template."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]
