"""`qwen3lab generate`: complete prompts, or answer them as chat messages with `--chat`.

Owns: reading prompts (arguments or stdin), wrapping them in the chat template with `--chat`,
and printing results as text, as a stream, or as JSON. Generation itself is `LLM.generate` /
`LLM.stream`; splitting reasoning from the answer is `qwen3lab.chat`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import HelpFormatter, add_model_args, add_sampling_args, add_thinking_args, load_llm, sampling_from_args

EPILOG = """\
examples:
  qwen3lab generate --chat "What is the capital of France?"
  qwen3lab generate --chat --no-think "Name three primes." --model Qwen/Qwen3-4B
  qwen3lab generate "def fibonacci(n):" --max-tokens 64 --temperature 0 --stop "def "
  qwen3lab generate "Once upon a time" --temperature 0.8 --seed 1 --n 3 --json
  echo "Tell me a joke." | qwen3lab generate --chat --stream
  printf 'Hello\\nBonjour\\n' | qwen3lab generate --lines --max-tokens 16

Plain mode continues the text as given. --chat sends each prompt as a user message through the
model's chat template; with thinking on (the Qwen3 default) the reasoning before </think> is shown
apart from the answer: dimmed on a terminal, between [thinking] and [/thinking] lines otherwise.
--json prints one JSON list: per prompt its token count and, per sample, the text, token ids and
finish reason (and with --chat the content, reasoning_content and tool_calls).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="complete prompts, or answer them with --chat",
                       description="Complete prompts, or answer them as chat messages with --chat.", epilog=EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text; none: read stdin")
    p.add_argument("--lines", action="store_true", help="read stdin as one prompt per non-empty line")
    add_model_args(p)
    add_sampling_args(p, max_tokens=256)
    g = p.add_argument_group("chat")
    g.add_argument("--chat", action="store_true", help="send each prompt as a user message with the chat template")
    g.add_argument("--system", metavar="S", default=None, help="system message (with --chat)")
    add_thinking_args(g)
    o = p.add_argument_group("output")
    o.add_argument("--stream", action="store_true", help="print text as it is generated")
    o.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts:
        return list(args.prompts)
    if sys.stdin.isatty():
        print("reading the prompt from stdin (end with Ctrl-D); or pass it as an argument", file=sys.stderr)
    text = sys.stdin.read()
    prompts = [line for line in text.splitlines() if line.strip()] if args.lines else [text.removesuffix("\n")]
    if not any(p.strip() for p in prompts):
        raise ValueError("no prompt given: pass PROMPT arguments or pipe text on stdin")
    return prompts


def run(args: argparse.Namespace) -> int:
    params = sampling_from_args(args)
    if args.stream and (args.json or params.n > 1):
        raise ValueError("--stream prints one sample as it is generated; use it without --json and with --n 1")
    if not args.chat and (args.system is not None or args.enable_thinking is not None):
        raise ValueError("--system, --think and --no-think apply to chat prompts; add --chat")
    prompts = read_prompts(args)
    llm = load_llm(args)
    thinking = args.chat and llm.thinking_enabled(args.enable_thinking)
    inputs = [chat_ids(llm, p, args) if args.chat else p for p in prompts]
    if args.stream:
        stream(llm, inputs, params, args.chat, thinking)
        return 0
    outs = llm.generate(inputs, params)
    if args.json:
        json.dump(to_json(prompts, outs, args.chat, thinking), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        show(outs, params.n, args.chat, thinking)
    return 0


def chat_ids(llm, prompt: str, args: argparse.Namespace) -> list[int]:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
               [{"role": "user", "content": prompt}]
    text = llm.render_chat(messages, enable_thinking=args.enable_thinking)
    return llm.tokenizer.encode(text, add_special_tokens=False)  # the template already has any BOS


def header(i: int, j: int, n_prompts: int, n: int) -> str | None:
    parts = ([f"prompt {i + 1}"] if n_prompts > 1 else []) + ([f"sample {j + 1}"] if n > 1 else [])
    return f"=== {', '.join(parts)} ===" if parts else None


def show(outs, n: int, chat: bool, thinking: bool) -> None:
    from ..chat import parse_output
    from .display import print_parsed

    for i, out in enumerate(outs):
        for j, sample in enumerate(out.outputs):
            if title := header(i, j, len(outs), n):
                print(title)
            if chat:
                print_parsed(parse_output(sample.text, thinking))
            else:
                sys.stdout.write(sample.text + "\n")
    sys.stdout.flush()


def stream(llm, inputs, params, chat: bool, thinking: bool) -> None:
    from ..chat import StreamingOutputParser
    from .display import ReplyPrinter

    for i, prompt in enumerate(inputs):
        if title := header(i, 0, len(inputs), 1):
            print(title, flush=True)
        parser, printer = (StreamingOutputParser(thinking), ReplyPrinter()) if chat else (None, None)
        for delta in llm.stream(prompt, params):
            if chat:
                printer.events(parser.feed(delta.text))
            else:
                sys.stdout.write(delta.text)
                sys.stdout.flush()
        if chat:
            printer.events(parser.finish())
            printer.close()
        else:
            sys.stdout.write("\n")


def to_json(prompts: list[str], outs, chat: bool, thinking: bool) -> list[dict]:
    from ..chat import parse_output

    results = []
    for prompt, out in zip(prompts, outs):
        samples = []
        for s in out.outputs:
            item = {"index": s.index, "text": s.text, "token_ids": s.token_ids, "finish_reason": s.finish_reason}
            if chat:
                parsed = parse_output(s.text, thinking)
                item.update(content=parsed.content, reasoning_content=parsed.reasoning_content,
                            tool_calls=parsed.tool_calls)
            samples.append(item)
        results.append({"prompt": prompt, "prompt_tokens": len(out.prompt_token_ids), "outputs": samples})
    return results
