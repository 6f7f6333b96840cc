"""Arithmetic word problems with integer answers, for GRPO demos (``{"messages", "answer"}`` rows).

Problems take one or two operations on small numbers ("Tom has 7 apples and buys 5 more ...").
The prompt asks for the final answer in ``\\boxed{}``, which the maths reward checks.
"""

from __future__ import annotations

import random

NAMES = ["Tom", "Ana", "Ravi", "Mia", "Leo", "Sara", "Ken", "Lina"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "cookies", "shells"]
SUFFIX = " Give the final answer as \\boxed{number}."


def _problem(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 5)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a = a + b
        return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    if kind == 2:
        return f"{name} buys {c} bags with {a} {item} in each bag. How many {item} is that in total?", a * c
    return (f"{name} has {a} {item}, finds {b} more, then gets {c} times as many as that in total. "
            f"How many {item} does {name} have?", (a + b) * c)


def make_problems(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, ans = _problem(rng)
        rows.append({"messages": [{"role": "user", "content": q + SUFFIX}], "answer": str(ans)})
    return rows
