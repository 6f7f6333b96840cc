"""``POST /v1/chat/completions``: whole responses and SSE streams."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..chat_output import ChoiceStream, chat_response, usage
from ..chat_prompt import build_chat_prompt
from ..driver import Done
from ..protocol import ChatCompletionRequest
from ..state import get_state
from ..streaming import ClientGone, sse, stream_response, wait_done

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = get_state(request)
    model = state.check_model(body.model)
    params = body.to_sampling_params(state.config.max_tokens_limit)
    state.check_sequences(params.n)
    prompt = await asyncio.to_thread(build_chat_prompt, body, state.llm)
    budget = body.thinking_budget_tokens(state.config.thinking_budget)
    if budget is not None and prompt.thinking:  # only a thinking-mode prompt has a thought to close
        params = dataclasses.replace(params, thinking_budget=budget)
    handle = await state.driver.submit(prompt.token_ids, params, prompt.text, prompt.constraint_factory,
                                       prefix="chatcmpl", adapter=state.adapter(model))
    response_id, created = handle.request_id, int(time.time())
    top = params.logprobs
    tokenizer = state.llm.tokenizer
    if not body.stream:
        try:
            done = await wait_done(handle, request)
        except ClientGone:
            return JSONResponse({}, status_code=499)
        return chat_response(done, response_id=response_id, created=created, model=model,
                             thinking=prompt.thinking, tokenizer=tokenizer, top_logprobs=top,
                             think_end=state.llm.engine.think_end)

    def chunk(choices: list[dict], **extra) -> str:
        return sse({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra})

    async def chunks():
        streams = [ChoiceStream(i, prompt.thinking, tokenizer, top) for i in range(params.n)]
        yield chunk([s.first() for s in streams])
        while True:
            item = await handle.next()
            if isinstance(item, Done):
                break
            for d in item:
                for choice in streams[d.index].feed(d):  # one choice per chunk, as OpenAI sends them
                    yield chunk([choice])
        if body.include_usage:
            yield chunk([], usage=usage(item, prompt.thinking, state.llm.engine.think_end))

    return stream_response(chunks(), [handle])
