"""What the engine hands back: finished request outputs and per-step streaming deltas (vLLM shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    spec_steps: int = 0  # speculative verification steps, drafts proposed and accepted
    spec_drafted: int = 0
    spec_accepted: int = 0

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens emitted per verification step (accepted drafts + the target's own token)."""
        return (self.spec_accepted + self.spec_steps) / self.spec_steps if self.spec_steps else None

    @property
    def cumulative_logprob(self) -> float | None:
        if self.logprobs is None:
            return None
        return sum(lp[t] for lp, t in zip(self.logprobs, self.token_ids))


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True
    # With SamplingParams.prompt_logprobs: per prompt token {token_id: logprob} (its own first, then the
    # top k), None for the first token, which nothing precedes.
    prompt_logprobs: list[dict[int, float] | None] | None = None

    # The first sample's fields, for the common n == 1 case: outs[0].text, outs[0].token_ids.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


@dataclass
class StreamDelta:
    """New tokens and text of one sample after one engine step."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
