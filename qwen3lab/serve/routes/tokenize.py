"""vLLM's tokenizer endpoints, which evaluation harnesses use to count and split text as the server does:
``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``, and ``GET /version``.

lm-evaluation-harness picks its "remote" tokenizer when ``/tokenizer_info`` names an ``eos_token`` and
``/tokenize`` answers, so it needs no download of a tokenizer by the served name.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ... import __version__
from ..chat_prompt import clean_messages
from ..errors import APIError, bad_request
from ..protocol import DetokenizeRequest, TokenizeRequest
from ..state import get_state

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = get_state(request)
    state.check_model(body.model)
    tok = state.llm.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", "prompt")

    def run() -> list[int]:
        if body.messages is not None:
            try:
                text = tok.apply_chat_template(clean_messages(body.messages),
                                               add_generation_prompt=body.add_generation_prompt)
            except APIError:
                raise
            except Exception as e:  # an empty or malformed conversation, or the template's raise_exception
                raise bad_request(f"cannot render the chat template: {e}", "messages") from None
            return tok.encode(text, add_special_tokens=False)
        return tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)

    ids = await asyncio.to_thread(run)
    out = {"count": len(ids), "max_model_len": state.llm.engine.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [tok.id_to_token(t) for t in ids]
    return out


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    state = get_state(request)
    state.check_model(body.model)
    tok = state.llm.tokenizer
    bad = [t for t in body.tokens if not 0 <= t < tok.vocab_size]
    if bad:
        raise bad_request(f"token id {bad[0]} is outside this tokenizer's vocabulary of {tok.vocab_size}", "tokens")
    return {"prompt": await asyncio.to_thread(tok.decode, body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request):
    state = get_state(request)
    tok = state.llm.tokenizer
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": state.llm.engine.max_model_len,
            "vocab_size": tok.vocab_size, "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "pad_token": tok.pad_token, "unk_token": tok.unk_token, "add_bos_token": tok.add_bos_token,
            "add_eos_token": tok.add_eos_token, "chat_template": tok.chat_template}


@router.get("/version")
async def version():
    return {"version": __version__}
