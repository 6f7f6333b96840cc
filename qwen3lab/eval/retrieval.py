"""Long-context retrieval samples, generated at a chosen length (after RULER, arXiv 2404.06654).

Three variants, in turn:
  ``needle``     one "special magic number" for a key, hidden at a random depth in filler text;
  ``multikey``   four such needles under different keys, one asked for (the others distract);
  ``vartrack``   a chain of variable assignments (``VAR ABCDE = 12345``, ``VAR FGHIJ = ABCDE``, ...)
                 spread through the text; asked for every variable that holds the value (multi-hop).
The filler is RULER's repeated noise sentences. A sample's ``answers`` are the strings the reply must
contain; its score is the share of them that it does (RULER's string-match-all). ``count`` gives the
token count of a text (the model's tokenizer); without it, 4 characters make a token.
"""

from __future__ import annotations

import random
import string

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
VARIANTS = ("needle", "multikey", "vartrack")
_WORDS = ["apple", "river", "violet", "copper", "meadow", "falcon", "harbor", "lantern", "cobalt", "orchid",
          "glacier", "saffron", "thunder", "willow", "ember", "quartz"]


def _estimate(text: str) -> int:
    return len(text) // 4


def _key(rng: random.Random) -> str:
    return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"


def _fill(needles: list[str], tokens: int, rng: random.Random, count) -> str:
    """Noise of about ``tokens`` tokens with the needles at random sentence boundaries, in order."""
    per = max(count(NOISE * 8) / 8, 1e-6)
    budget = tokens - sum(count(n) for n in needles)
    reps = max(int(budget / per), len(needles) + 1)
    cuts = sorted(rng.sample(range(reps + 1), len(needles)))
    parts, last = [], 0
    for cut, needle in zip(cuts, needles):
        parts.append(NOISE * (cut - last))
        parts.append(needle + " ")
        last = cut
    parts.append(NOISE * (reps - last))
    return "".join(parts).strip()


def make_samples(n: int, tokens: int, seed: int = 2, count=None) -> list[dict]:
    """``n`` samples whose context is about ``tokens`` tokens long."""
    count = count or _estimate
    rng, rows = random.Random(seed), []
    question_room = 120  # the instruction and question around the context
    for i in range(n):
        variant = VARIANTS[i % len(VARIANTS)]
        if variant in ("needle", "multikey"):
            keys = []
            while len(keys) < (1 if variant == "needle" else 4):
                k = _key(rng)
                if k not in keys:
                    keys.append(k)
            values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
            needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in zip(keys, values)]
            asked = rng.randrange(len(keys))
            order = rng.sample(range(len(keys)), len(keys))
            context = _fill([needles[j] for j in order], tokens - question_room, rng, count)
            question = (f"What is the special magic number for {keys[asked]} mentioned in the provided text? "
                        "Answer with the number only.")
            answers = [values[asked]]
        else:
            names = []
            while len(names) < 4:
                name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
                if name not in names:
                    names.append(name)
            value = str(rng.randint(10_000, 99_999))
            needles = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = {a}." for a, b in zip(names, names[1:])]
            context = _fill(needles, tokens - question_room, rng, count)
            question = (f"Find all variables that are assigned the value {value} in the text above, directly or "
                        "through another variable. Answer with their names only.")
            answers = names
        prompt = ("Some special values are hidden in the following text. Memorize them: I will ask about them "
                  f"afterwards.\n\n{context}\n\n{question}")
        rows.append({"messages": [{"role": "user", "content": prompt}], "answers": answers, "variant": variant,
                     "context_tokens": tokens})
    return rows


def score(output: str, answers: list[str]) -> float:
    """RULER's string-match-all: the share of the answers the reply contains (case-insensitive)."""
    text = output.lower()
    return sum(a.lower() in text for a in answers) / len(answers)
