"""`qwen3lab chat`: an interactive conversation with streamed replies.

Owns: the read-reply loop, the slash commands, and the conversation history. Reasoning is shown
apart from the answer (see `display.py`) and left out of the history: only the answer is stored,
as the Qwen3 template drops earlier reasoning anyway. Works with piped stdin (one message a line),
so scripts and tests can drive it; status lines go to stderr, replies to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from .common import HelpFormatter, add_model_args, add_sampling_args, add_thinking_args, load_llm, sampling_from_args

COMMANDS = """\
commands (type them alone on a line):
  /think      turn thinking on for the following turns
  /no_think   turn thinking off for the following turns
  /reset      forget the conversation (the system message stays)
  /help       show these commands
  /exit       leave (also /quit, Ctrl-D)
A message that merely contains /think or /no_think is sent as written: Qwen3 reads it as a soft
switch for that turn.
"""

EPILOG = f"""\
examples:
  qwen3lab chat
  qwen3lab chat --model Qwen/Qwen3-4B --system "You are a terse assistant."
  qwen3lab chat --model ./Qwen3-4B --no-think --temperature 0.7
  printf 'Hello\\n/no_think\\nAnd in French?\\n/exit\\n' | qwen3lab chat --max-tokens 64

{COMMANDS}"""


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to the model, replies streamed as they are generated",
                       description="Interactive chat with streamed replies; reasoning is shown apart from the answer.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_model_args(p)
    add_sampling_args(p, max_tokens=2048, with_n=False)
    p.add_argument("--system", "-s", metavar="S", default=None, help="system message for the whole conversation")
    add_thinking_args(p)
    p.set_defaults(func=run)


class ChatSession:
    """History plus the thinking switch; `reply(text)` streams one answer to stdout."""

    def __init__(self, llm, params, system: str | None, enable_thinking: bool | None):
        self.llm, self.params, self.enable_thinking = llm, params, enable_thinking
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str) -> str | None:
        from ..chat import StreamingOutputParser
        from .display import ReplyPrinter

        user = {"role": "user", "content": text}
        prompt = self.llm.render_chat(self.system + self.history + [user], enable_thinking=self.enable_thinking)
        ids = self.llm.tokenizer.encode(prompt, add_special_tokens=False)
        parser = StreamingOutputParser(self.llm.thinking_enabled(self.enable_thinking))
        printer = ReplyPrinter()
        try:
            # closing(): an interrupted stream aborts its request at once instead of at garbage collection
            with contextlib.closing(self.llm.stream(ids, self.params)) as deltas:
                for delta in deltas:
                    printer.events(parser.feed(delta.text))
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
        printer.events(parser.finish())
        printer.close()
        answer = parser.result().content
        self.history += [user, {"role": "assistant", "content": answer or ""}]
        return answer


def read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return None
        except KeyboardInterrupt:  # as in the Python REPL: drop the line, keep the conversation
            print(file=sys.stderr)
            return ""
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def command(session: ChatSession, line: str) -> bool | None:
    """Run a slash command: True to go on, False to leave, None if `line` is a message."""
    word = line.strip()
    if word in ("/exit", "/quit"):
        return False
    if word == "/reset":
        session.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif word in ("/think", "/no_think"):
        session.enable_thinking = word == "/think"
        if session.enable_thinking and not session.llm.thinking_enabled(True):
            print("(this model's chat template has no thinking mode)", file=sys.stderr)
        else:
            print(f"(thinking {'on' if session.enable_thinking else 'off'} for the following turns)",
                  file=sys.stderr)
    elif word == "/help":
        print(COMMANDS, file=sys.stderr)
    else:
        return None
    return True


def run(args: argparse.Namespace) -> int:
    params = sampling_from_args(args)
    llm = load_llm(args)
    session = ChatSession(llm, params, args.system, args.enable_thinking)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  line editing and history for input()
        print(f"chatting with {llm.model_path}; /help for commands, /exit or Ctrl-D to leave", file=sys.stderr)
    while (line := read_line(interactive)) is not None:
        if not line.strip():
            continue
        action = command(session, line)
        if action is False:
            break
        if action is None:
            try:
                session.reply(line)
            except ValueError as e:  # e.g. the conversation outgrew the context window
                print(f"error: {e}", file=sys.stderr)
    return 0
