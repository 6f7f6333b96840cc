"""``POST /v1/completions``: the legacy text API; a prompt string, token ids, or a batch of either.

``echo`` returns the prompt before the completion and, with ``logprobs``, the log-probability of every
prompt token (null for the first), as the harnesses score multiple choice; ``max_tokens: 0`` then scores
without generating. The prompt is scored in the engine's own batches (a prefill that keeps logits).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..driver import Done, RequestHandle
from ..errors import bad_request, encode_bounded
from ..logprobs import completion_logprobs, echoed_logprobs, joined, prompt_logprobs_field
from ..protocol import CompletionRequest
from ..state import get_state
from ..streaming import ClientGone, sse, stream_response, wait_done

router = APIRouter()


def _prompts(prompt, tokenizer, limit: int) -> list[tuple[list[int], str | None]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt is empty", "prompt")
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((encode_bounded(tokenizer, p, limit, "prompt"), p))
        else:
            out.append((list(p), None))
    return out


def _count(prompt) -> int:
    """Prompts in a completions ``prompt`` field: a string or token list is one."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = get_state(request)
    model = state.check_model(body.model)
    params = body.to_sampling_params(state.config.max_tokens_limit)
    if body.stream and params.prompt_logprobs is not None:
        raise bad_request("prompt logprobs (echo with logprobs, or prompt_logprobs) need stream: false", "stream")
    tokenizer = state.llm.tokenizer
    state.check_sequences(params.n, _count(body.prompt))
    prompts = await asyncio.to_thread(_prompts, body.prompt, tokenizer, state.llm.engine.max_model_len)
    response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    handles: list[RequestHandle] = []
    try:
        for ids, text in prompts:
            handles.append(await state.driver.submit(ids, params, text, prefix="cmpl", adapter=state.adapter(model)))
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    k = params.logprobs

    def index(p: int, i: int) -> int:  # OpenAI numbers choices prompt by prompt
        return p * params.n + i

    if not body.stream:
        try:
            dones = await asyncio.gather(*(wait_done(h, request) for h in handles))
        except ClientGone:
            return JSONResponse({}, status_code=499)
        choices = []
        for p, done in enumerate(dones):
            ids, text = prompts[p]
            echoed = (text if text is not None else tokenizer.decode(ids)) if body.echo else ""
            prompt_lps = done.output.prompt_logprobs
            for o in done.output.outputs:
                lp = completion_logprobs(tokenizer, o.token_ids, o.logprobs or [], k) if k is not None else None
                if lp is not None and body.echo:
                    lp = joined(echoed_logprobs(tokenizer, ids, prompt_lps, k), lp, len(echoed))
                choice = {"index": index(p, o.index), "text": echoed + o.text, "logprobs": lp,
                          "finish_reason": o.finish_reason}
                if body.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = prompt_logprobs_field(tokenizer, ids, prompt_lps)
                choices.append(choice)
        prompt_tokens = sum(d.prompt_tokens for d in dones)
        completion_tokens = sum(len(o.token_ids) for d in dones for o in d.output.outputs)
        return {"id": response_id, "object": "text_completion", "created": created, "model": model,
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens,
                          "prompt_tokens_details": {"cached_tokens": sum(d.cached_tokens for d in dones)}}}

    async def chunks():
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(p: int, h: RequestHandle):  # merge the prompts' streams in arrival order
            try:
                while True:
                    item = await h.next()
                    await queue.put((p, item))
                    if isinstance(item, Done):
                        return
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises
                await queue.put((p, e))

        tasks = [asyncio.create_task(pump(p, h)) for p, h in enumerate(handles)]
        offsets: dict[int, int] = {}
        if body.echo:  # the prompt first, one chunk per choice
            for p, (ids, text) in enumerate(prompts):
                echoed = text if text is not None else tokenizer.decode(ids)
                yield sse({"id": response_id, "object": "text_completion", "created": created, "model": model,
                           "choices": [{"index": index(p, i), "text": echoed, "logprobs": None, "finish_reason": None}
                                       for i in range(params.n)]})
        dones: list[Done] = []
        try:
            while len(dones) < len(handles):
                p, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Done):
                    dones.append(item)
                    continue
                choices = []
                for d in item:
                    i = index(p, d.index)
                    lp = None
                    if k is not None and d.logprobs:
                        lp = completion_logprobs(tokenizer, d.token_ids, d.logprobs, k, offsets.get(i, 0))
                    offsets[i] = offsets.get(i, 0) + len(d.text)
                    choices.append({"index": i, "text": d.text, "logprobs": lp,
                                    "finish_reason": d.finish_reason if d.finished else None})
                yield sse({"id": response_id, "object": "text_completion", "created": created, "model": model,
                           "choices": choices})
            if body.include_usage:
                pt = sum(d.prompt_tokens for d in dones)
                ct = sum(len(o.token_ids) for d in dones for o in d.output.outputs)
                yield sse({"id": response_id, "object": "text_completion", "created": created, "model": model,
                           "choices": [], "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                                                    "total_tokens": pt + ct}})
        finally:
            for t in tasks:
                t.cancel()

    return stream_response(chunks(), handles)
