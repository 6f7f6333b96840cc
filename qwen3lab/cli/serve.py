"""`qwen3lab serve`: run the OpenAI-compatible HTTP server and the browser chat page with uvicorn.

Owns: the server's command-line options and turning them into `LLM` and `ServerConfig`.
Leaves out: the server itself (`qwen3lab.serve`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.config import EngineConfig
from .common import HelpFormatter, add_model_args, model_kwargs

EPILOG = """\
examples:
  qwen3lab serve                                   # embedded SmolLM2 on http://127.0.0.1:8000
  qwen3lab serve --model Qwen/Qwen3-4B --port 8000 --api-key secret
  qwen3lab serve --model Qwen/Qwen3-4B --lora-modules extract=runs/extract/final math=runs/grpo/final
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}'

With --lora-modules each adapter is a model of its own in /v1/models: a request with
"model": "extract" runs the base model with that adapter; requests for the base name run it
without one, and both kinds share every batch.

Open http://127.0.0.1:8000/ in a browser for the chat page. Endpoints: /v1/chat/completions,
/v1/completions, /v1/models, /health, /metrics (Prometheus). Unset sampling fields follow the
checkpoint's generation_config.json, like `qwen3lab generate`.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server (and a chat page at /)",
                       description="Serve a model over an OpenAI-compatible HTTP API with continuous batching.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    g.add_argument("--api-key", default=None, metavar="K",
                   help="require 'Authorization: Bearer K' on /v1/* (default: no key)")
    g.add_argument("--served-model-name", nargs="+", action="extend", default=None, metavar="NAME",
                   help="model name(s) clients use, the first one answered (default: the --model value as given, "
                        "as vLLM names it; the embedded model's file name without --model)")
    g.add_argument("--lora-modules", nargs="+", action="extend", default=None, metavar="NAME=DIR",
                   help="LoRA adapters (PEFT folders) served side by side under these model names, chosen per "
                        "request by its \"model\" field (as vLLM's --lora-modules)")
    g.add_argument("--max-tokens-limit", type=int, default=None, metavar="N",
                   help="cap on a request's max_tokens (larger asks are cut to it); also the default "
                        "(default: the context)")
    g.add_argument("--max-body-mb", type=float, default=8.0, metavar="MB",
                   help="largest request body accepted (default: %(default)s)")
    g.add_argument("--max-waiting", type=int, default=256, metavar="N",
                   help="waiting sequences before new requests get 503 (default: %(default)s)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM / Ctrl-C, seconds running requests get to finish before they end with an "
                        "error (default: %(default)s)")
    g.add_argument("--protect-metrics", action="store_true",
                   help="/metrics needs the --api-key too (by default it is open, as vLLM's: bind to a trusted "
                        "interface or set this)")
    g.add_argument("--thinking-budget", type=int, default=None, metavar="N",
                   help="default reasoning tokens of thinking-mode chat requests, after which the thought is "
                        "closed and the answer follows (requests set thinking_budget or reasoning_effort)")
    g.add_argument("--max-n", type=int, default=16, metavar="N",
                   help="sequences one request may start: n, times the prompts of a /v1/completions batch "
                        "(default: %(default)s)")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    e = p.add_argument_group("engine")
    e.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs, metavar="N",
                   help="sequences per batch (default: %(default)s)")
    e.add_argument("--max-model-len", type=int, default=EngineConfig.max_model_len, metavar="N",
                   help="context window (default: the checkpoint's max_position_embeddings)")
    e.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens, metavar="N",
                   help="tokens per engine step (default: %(default)s)")
    e.add_argument("--kv-cache-memory-gb", type=float, default=EngineConfig.kv_cache_memory_gb, metavar="GB",
                   help="KV-cache pool size (default: %(default)s)")
    e.add_argument("--speculative", default=None, metavar="JSON",
                   help='lossless speculative decoding, e.g. \'{"method": "ngram", "num_tokens": 4}\' or '
                        '\'{"method": "eagle3", "model": "DIR", "num_tokens": 4}\' (also "draft"); token trees with '
                        '"topk" > 1, e.g. \'{"method": "eagle3", "model": "DIR", "num_tokens": 12, "topk": 4, '
                        '"num_steps": 5}\'')
    p.set_defaults(func=run)


def _speculative(text: str | None) -> dict | None:
    if not text:
        return None
    import json

    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--speculative must be a JSON object like '{{\"method\": \"ngram\"}}': {e}") from e
    if not isinstance(spec, dict):
        raise ValueError("--speculative must be a JSON object")
    return spec


def _lora_modules(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules takes NAME=DIR pairs, got {item!r}")
        if name in out:
            raise ValueError(f"--lora-modules names {name!r} twice")
        if not Path(path).is_dir():
            raise ValueError(f"--lora-modules {name}: {path} is not a folder (a PEFT adapter folder with "
                             "adapter_config.json and adapter_model.safetensors)")
        out[name] = path
    return out


def served_names(given: list[str] | None, model: str | None, model_path) -> list[str]:
    """``--served-model-name`` values, else the ``--model`` value as given (what vLLM answers to, so clients
    such as bfcl-eval that send the model path find it), else the embedded model's file name."""
    if given:
        return list(given)
    return [str(model)] if model else [Path(str(model_path)).name.removesuffix(".gguf")]


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..llm import LLM
    from ..serve import ServerConfig, build_app
    from ..speculative.config import SpeculativeConfig

    if args.thinking_budget is not None and args.thinking_budget < 0:
        raise ValueError("--thinking-budget must be >= 0")
    if args.protect_metrics and not args.api_key:
        raise ValueError("--protect-metrics needs --api-key: the key /metrics is checked against")
    for name in ("port", "max_num_seqs", "max_waiting", "max_n"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    adapters = _lora_modules(args.lora_modules)
    speculative = SpeculativeConfig.of(_speculative(args.speculative))  # a bad key fails before loading
    llm = LLM(**model_kwargs(args), lora_adapters=adapters, max_num_seqs=args.max_num_seqs,
              max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
              kv_cache_memory_gb=args.kv_cache_memory_gb, speculative=speculative)
    names = served_names(args.served_model_name, args.model, llm.model_path)
    config = ServerConfig(served_model_names=names, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
                          max_body_bytes=int(args.max_body_mb * 2**20), max_waiting=args.max_waiting,
                          max_n=args.max_n, protect_metrics=args.protect_metrics,
                          thinking_budget=args.thinking_budget)
    served = ", ".join([names[0], *(adapters or {})])
    print(f"qwen3lab: serving {served} on http://{args.host}:{args.port}/ (chat page at /)", file=sys.stderr)
    from ..serve.shutdown import DrainingServer

    if args.shutdown_timeout < 0:
        raise ValueError("--shutdown-timeout must be >= 0")
    app = build_app(llm, config)
    server = DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level),
                            app.state.qwen3lab.driver, args.shutdown_timeout)
    server.run()
    return 0
