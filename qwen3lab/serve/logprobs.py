"""Engine logprobs (one ``{token_id: logprob}`` dict per generated token) in the two OpenAI shapes.

The engine's dict holds the sampled token and the top k; the top list is the k best of it.
"""

from __future__ import annotations


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda kv: -kv[1])[:k]


def chat_logprobs(tokenizer, token_ids: list[int], entries: list[dict[int, float]], k: int) -> list[dict]:
    """``choices[i].logprobs.content`` of chat completions."""
    def item(token_id: int, value: float) -> dict:
        text = _token(tokenizer, token_id)
        return {"token": text, "logprob": max(value, -9999.0), "bytes": list(text.encode("utf-8"))}

    out = []
    for token_id, entry in zip(token_ids, entries):
        out.append({**item(token_id, entry[token_id]), "top_logprobs": [item(t, v) for t, v in _top(entry, k)]})
    return out


def completion_logprobs(tokenizer, token_ids: list[int], entries: list[dict[int, float]], k: int,
                        offset: int = 0) -> dict:
    """``choices[i].logprobs`` of the legacy completions API; ``offset`` is the text length before."""
    tokens, values, tops, offsets = [], [], [], []
    for token_id, entry in zip(token_ids, entries):
        text = _token(tokenizer, token_id)
        tokens.append(text)
        values.append(max(entry[token_id], -9999.0))
        tops.append({_token(tokenizer, t): max(v, -9999.0) for t, v in _top(entry, k)} if k else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def echoed_logprobs(tokenizer, prompt_ids: list[int], prompt_entries: list, k: int | None) -> dict:
    """The prompt's part of legacy completions logprobs under ``echo``: nothing precedes the first token,
    so its logprob and top list are null (as OpenAI and vLLM give them)."""
    out = completion_logprobs(tokenizer, prompt_ids[1:], prompt_entries[1:], k or 0)
    first = _token(tokenizer, prompt_ids[0])
    out["tokens"].insert(0, first)
    out["token_logprobs"].insert(0, None)
    out["top_logprobs"].insert(0, None)
    out["text_offset"] = [0] + [o + len(first) for o in out["text_offset"]]
    return out


def joined(a: dict, b: dict, offset: int) -> dict:
    """Legacy logprobs ``a`` followed by ``b``, whose text offsets start ``offset`` characters later."""
    return {"tokens": a["tokens"] + b["tokens"], "token_logprobs": a["token_logprobs"] + b["token_logprobs"],
            "top_logprobs": a["top_logprobs"] + b["top_logprobs"],
            "text_offset": a["text_offset"] + [o + offset for o in b["text_offset"]]}


def prompt_logprobs_field(tokenizer, prompt_ids: list[int], entries: list) -> list:
    """vLLM's ``choices[i].prompt_logprobs``: null, then per token {token id: {logprob, decoded_token}}."""
    return [None] + [{str(t): {"logprob": max(v, -9999.0), "decoded_token": _token(tokenizer, t)}
                      for t, v in entry.items()} for entry in entries[1:]]
