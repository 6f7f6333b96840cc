"""Where samples run: the engine in this process (``LocalBackend``) or any OpenAI-compatible server
(``ServerBackend``). Both render chats with the model's own template, return completions as each
request finishes, and score text by log-likelihood (the server through ``echo`` + ``logprobs``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .tool_calls import as_text

# Qwen3's published sampling per mode; the checkpoint's generation_config and the request override it.
THINKING_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
NON_THINKING_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}


def joined(reasoning: str | None, content: str | None) -> str:
    """One completion text from its reasoning and answer parts, whichever backend split them."""
    return (f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + (content or "")


def _pairs(tokenize, context: str, continuation: str) -> tuple[list[int], int]:
    """(ids of context + continuation, where the continuation starts), split as lm-evaluation-harness does:
    the whole string encoded once, the context's own encoding giving the cut."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # a trailing space belongs to the continuation's first token
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = tokenize(context + continuation), tokenize(context)
    return whole, len(ctx)


class LocalBackend:
    def __init__(self, llm):
        self.llm = llm

    @property
    def thinking(self) -> bool:
        return "<think>" in (self.llm.tokenizer.chat_template or "")

    @property
    def renders_tools(self) -> bool:
        return "tools" in (self.llm.tokenizer.chat_template or "")

    def _drive(self, requests: Iterable[tuple[str, list[int], object]], total: int, desc: str,
               follow=None) -> Iterator:
        """Queue every request on the engine, step it, and yield (key, RequestOutput) as each finishes.
        ``follow(key, output)`` may return the key's next (ids, params): it joins the running batch, and
        the key is yielded only when it has no next request."""
        engine, pending = self.llm.engine, {}
        for key, ids, params in requests:
            pending[engine.add_request(ids, params)] = key
        bar = tqdm(total=total, desc=desc, unit="req", leave=False)
        try:
            while pending:
                engine.step()
                for rid in [r for r in pending if engine.is_finished(r)]:
                    key, out = pending.pop(rid), engine.pop(rid)
                    again = follow(key, out) if follow else None
                    if again is not None:
                        pending[engine.add_request(*again)] = key
                        continue
                    bar.update(1)
                    yield key, out
        finally:
            for rid in pending:
                engine.abort(rid)
                engine.pop(rid)
            bar.close()

    def _chat_ids(self, messages: list[dict], tools: list[dict] | None, thinking: bool | None) -> list[int]:
        return self.llm.tokenizer.encode(self.llm.render_chat(messages, tools, thinking), add_special_tokens=False)

    def converse(self, dialogs: dict, sampling: dict, thinking: bool | None) -> Iterator[str]:
        """Play every ``multi_turn.Dialog`` to its end, all in one running batch; yields each key when done."""
        from ..chat.parser import parse_output
        from ..sampling import SamplingParams

        params, in_thinking = SamplingParams(**sampling), self.llm.thinking_enabled(thinking)

        def next_request(key):
            req = dialogs[key].request()
            return None if req is None else (self._chat_ids(*req, thinking), params)

        def follow(key, out):
            p = parse_output(out.outputs[0].text, thinking=in_thinking)
            dialogs[key].reply(p.content, p.tool_calls)
            return next_request(key)

        first = [(k, *r) for k in dialogs if (r := next_request(k)) is not None]
        yield from (k for k in dialogs if dialogs[k].done)
        for key, _ in self._drive(first, len(first), "conversations", follow):
            yield key

    def generate(self, items: list[tuple], sampling: dict, n: int, thinking: bool | None
                 ) -> Iterator[tuple[str, list[str]]]:
        """``items``: (key, messages) or (key, messages, tools); yields (key, n completion texts)."""
        from ..chat.parser import parse_output
        from ..sampling import SamplingParams

        params = SamplingParams(n=n, **sampling)
        requests = ((it[0], self._chat_ids(it[1], it[2] if len(it) > 2 else None, thinking), params)
                    for it in items)
        in_thinking = self.llm.thinking_enabled(thinking)
        for key, out in self._drive(requests, len(items), "generating"):
            parsed = (parse_output(o.text, thinking=in_thinking) for o in sorted(out.outputs, key=lambda o: o.index))
            yield key, [joined(p.reasoning_content, p.content) + as_text(p.tool_calls) for p in parsed]

    def loglikelihood(self, items: list[tuple[str, str, str]]) -> Iterator[tuple[str, float, int]]:
        """(key, context, continuation) -> (key, log P(continuation | context), continuation tokens)."""
        from ..sampling import SamplingParams

        params = SamplingParams(max_tokens=0, prompt_logprobs=0)
        cuts = {}

        def requests():
            for key, context, continuation in items:
                ids, cut = _pairs(lambda s: self.llm.tokenizer.encode(s, add_special_tokens=False), context,
                                  continuation)
                cuts[key] = (ids, cut)
                yield key, ids, params

        for key, out in self._drive(requests(), len(items), "scoring"):
            ids, cut = cuts.pop(key)
            lps = out.prompt_logprobs
            yield key, sum(lps[p][ids[p]] for p in range(max(cut, 1), len(ids))), len(ids) - max(cut, 1)


class ServerBackend:
    """An OpenAI-compatible server (qwen3lab, vLLM): chat completions to generate, completions with ``echo``
    and ``logprobs`` to score, ``/tokenize`` to cut continuations at the server's own token boundaries."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, concurrency: int = 16):
        import openai

        self.url = url.rstrip("/").removesuffix("/v1")
        self.api_key, self.concurrency = api_key or "none", concurrency
        try:
            served = self._get("/v1/models")["data"]
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RuntimeError(f"cannot reach an OpenAI-compatible server at {url} ({e}); start one with "
                               "`qwen3lab serve` or check the URL") from None
        self.model = model or served[0]["id"]
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key, max_retries=2, timeout=600)
        self._template = None

    def _request(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def _get(self, path: str) -> dict:
        return self._request(path)

    @property
    def template(self) -> str:
        if self._template is None:
            try:
                self._template = self._get("/tokenizer_info").get("chat_template") or ""
            except (urllib.error.URLError, OSError, ValueError):
                self._template = ""
        return self._template

    @property
    def thinking(self) -> bool:
        return "<think>" in self.template

    @property
    def renders_tools(self) -> bool:
        return "tools" in self.template

    def _pool(self, fn, items, desc: str):
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(fn, item) for item in items]
            for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="req", leave=False):
                yield f.result()

    def _chat(self, messages, tools, sampling: dict, n: int, thinking: bool | None):
        extra = {k: v for k, v in sampling.items() if k in ("top_k", "min_p", "repetition_penalty")}
        if thinking is not None:
            extra["chat_template_kwargs"] = {"enable_thinking": thinking}
        kw = {"tools": tools} if tools else {}
        r = self.client.chat.completions.create(
            model=self.model, messages=messages, n=n, temperature=sampling.get("temperature"), **kw,
            top_p=sampling.get("top_p"), presence_penalty=sampling.get("presence_penalty"),
            max_tokens=sampling.get("max_tokens"), seed=sampling.get("seed"), extra_body=extra)
        return sorted(r.choices, key=lambda c: c.index)

    def generate(self, items, sampling: dict, n: int, thinking: bool | None):
        def one(item):
            key, messages, tools = (*item, None)[:3]
            # Reasoning comes back apart; keep it in front, as the local backend's raw text has it.
            return key, [joined(getattr(c.message, "reasoning_content", None), c.message.content)
                         + as_text([t.model_dump() for t in c.message.tool_calls or []])
                         for c in self._chat(messages, tools, sampling, n, thinking)]

        return self._pool(one, items, "generating")

    def converse(self, dialogs: dict, sampling: dict, thinking: bool | None):
        def one(key):
            dialog = dialogs[key]
            while (req := dialog.request()) is not None:
                (c,) = self._chat(*req, sampling, 1, thinking)
                dialog.reply(c.message.content, [t.model_dump() for t in c.message.tool_calls or []])
            return key

        return self._pool(one, list(dialogs), "conversations")

    def loglikelihood(self, items):
        def one(item):
            key, context, continuation = item
            ids, cut = _pairs(lambda s: self._request("/tokenize", {"model": self.model, "prompt": s,
                                                                    "add_special_tokens": False})["tokens"],
                              context, continuation)
            r = self.client.completions.create(model=self.model, prompt=ids, max_tokens=0, echo=True, logprobs=0,
                                               temperature=0)
            lps = r.choices[0].logprobs.token_logprobs
            start = max(cut, 1)
            return key, sum(lps[start:len(ids)]), len(ids) - start

        return self._pool(one, items, "scoring")
