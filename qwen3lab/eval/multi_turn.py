"""Multi-turn tool calling against the simulated APIs of ``environments``, scored as BFCL's multi-turn
checker scores it.

A sample: ``question`` (one entry per user turn: a string or a list of messages), ``initial_config``
(the environments and their starting state) and ``ground_truth`` (per turn, the calls that do the job,
as BFCL writes them, ``"cd(folder='docs')"``, or as ``{"name": ..., "arguments": {...}}``).

The model plays each turn until it answers without calling a tool (or 20 steps, BFCL's limit); each
call it makes runs on its own copy of the environments and its result goes back as a tool message.
The ground truth runs on a second copy, turn by turn. A turn passes when, after it, every environment
has the same state in both copies and every result of the turn's ground-truth calls is among the
results of the model's calls so far (in any order, each used once). A turn whose ground truth is empty
passes only if the model made no call. A sample passes when every turn does.
"""

from __future__ import annotations

import ast
import json

from .environments import Environment, build, dispatch
from .tool_calls import as_text, prompted

STEP_LIMIT = 20


def parse_call(call) -> tuple[str, dict]:
    """A ground-truth call as BFCL writes it (``"mv(source='a', destination='b')"``) or as a dict."""
    if isinstance(call, dict):
        f = call.get("function", call)
        args = f.get("arguments", {})
        return f["name"], json.loads(args) if isinstance(args, str) else dict(args)
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ValueError(f"ground-truth call {call!r}: expected name(keyword=value, ...)")
    return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}


def _canonical(result) -> str:
    return json.dumps(result, sort_keys=True, ensure_ascii=False)


def _tool_result_text(results: list) -> str:
    return "".join(f"<tool_response>\n{json.dumps(r, ensure_ascii=False)}\n</tool_response>\n" for r in results)


class Dialog:
    """One sample's conversation: ``request()`` gives the next (messages, tools) to complete, or None when
    the sample is done; ``reply(content, tool_calls)`` takes the model's answer to it."""

    def __init__(self, row: dict, native_tools: bool, source: str = "task"):
        self.row, self.native = row, native_tools
        self.turns = [[{"role": "user", "content": t}] if isinstance(t, str) else list(t) for t in row["question"]]
        self.truth = [[parse_call(c) for c in turn] for turn in row["ground_truth"]]
        if len(self.truth) != len(self.turns):
            raise ValueError(f"{source} sample {row.get('id')}: {len(self.turns)} turn(s) in 'question' but "
                             f"{len(self.truth)} in 'ground_truth'")
        self.envs = build(row["initial_config"], source)
        self.tools = [t for env in self.envs.values() for t in env.tools()]
        self.messages: list[dict] = []
        self.log: list[dict] = []  # per turn: the model's steps, each a list of (name, args, result)
        self.turn, self.steps = -1, 0
        self._next_turn()

    def _next_turn(self) -> None:
        self.turn += 1
        self.steps = 0
        if self.turn < len(self.turns):
            self.messages.extend(self.turns[self.turn])
            self.log.append({"steps": [], "answer": None})

    @property
    def done(self) -> bool:
        return self.turn >= len(self.turns)

    def request(self) -> tuple[list[dict], list[dict] | None] | None:
        return None if self.done else self.transcript()

    def transcript(self) -> tuple[list[dict], list[dict] | None]:
        """The conversation as the model sees it, with the tools (or, prompted, without them)."""
        return (self.messages, self.tools) if self.native else (prompted(self.messages, self.tools), None)

    def reply(self, content: str | None, tool_calls: list[dict]) -> None:
        content = content or ""  # an empty answer is "" whether the parser or a server gave None
        if not tool_calls:
            self.messages.append({"role": "assistant", "content": content or ""})
            self.log[-1]["answer"] = content
            self._next_turn()
            return
        step = []
        for c in tool_calls:
            f = c.get("function", c)
            try:
                args = json.loads(f.get("arguments") or "{}") if isinstance(f.get("arguments"), str) else f["arguments"]
            except json.JSONDecodeError:
                args = None
            result = dispatch(self.envs, f["name"], args) if isinstance(args, dict) else \
                {"error": f"{f['name']}: arguments are not a JSON object"}
            step.append({"name": f["name"], "arguments": args, "result": result})
        self.log[-1]["steps"].append(step)
        if self.native:
            calls = [{"id": c.get("id") or f"call_{self.turn}_{self.steps}_{i}", "type": "function",
                      "function": {"name": s["name"], "arguments": json.dumps(s["arguments"])}}
                     for i, (c, s) in enumerate(zip(tool_calls, step))]
            self.messages.append({"role": "assistant", "content": content or "", "tool_calls": calls})
            self.messages.extend({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(s["result"])}
                                 for c, s in zip(calls, step))
        else:  # a template without tools: the calls as text, their results in a user turn (Qwen's form)
            self.messages.append({"role": "assistant", "content": (content or "") + as_text(tool_calls)})
            self.messages.append({"role": "user", "content": _tool_result_text([s["result"] for s in step])})
        self.steps += 1
        if self.steps >= STEP_LIMIT:
            self.log[-1]["answer"] = None
            self._next_turn()

    def score(self) -> dict:
        return check(self.row["initial_config"], self.truth, self.log)


def check(initial_config: dict, truth: list[list[tuple[str, dict]]], log: list[dict]) -> dict:
    """Replay the model's calls and the ground truth on fresh environments, turn by turn (BFCL's checker)."""
    model, reference = build(initial_config), build(initial_config)
    model_results: list[str] = []
    turns_ok, reason = [], None
    for i, (expected, played) in enumerate(zip(truth, log)):
        calls = [c for step in played["steps"] for c in step]
        for c in calls:
            r = dispatch(model, c["name"], c["arguments"]) if isinstance(c["arguments"], dict) else c["result"]
            model_results.append(_canonical(r))
        truth_results = [_canonical(dispatch(reference, name, args)) for name, args in expected]
        why = None
        if not expected:
            why = f"turn {i}: called a function where none was needed" if calls else None
        elif not calls:
            why = f"turn {i}: no function called"
        else:
            why = _state_difference(model, reference, i) or _missing_result(model_results, truth_results, i)
        turns_ok.append(why is None)
        reason = reason or why
    return {"scores": {"accuracy": float(all(turns_ok)), "turn_accuracy": sum(turns_ok) / max(len(turns_ok), 1)},
            "turns_passed": turns_ok, "reason": reason or "ok",
            "end_state": {k: e.state() for k, e in model.items()},
            "expected_state": {k: e.state() for k, e in reference.items()}}


def _state_difference(model: dict[str, Environment], reference: dict[str, Environment], turn: int) -> str | None:
    for name, env in reference.items():
        want, got = env.state(), model[name].state()
        for attr in want:
            if got.get(attr) != want[attr]:
                return f"turn {turn}: {name}.{attr} is {json.dumps(got.get(attr))}, expected {json.dumps(want[attr])}"
    return None


def _missing_result(model_results: list[str], truth_results: list[str], turn: int) -> str | None:
    left = list(model_results)
    for r in truth_results:
        if r in left:
            left.remove(r)
        else:
            return f"turn {turn}: no call of the model returned {r}"
    return None
