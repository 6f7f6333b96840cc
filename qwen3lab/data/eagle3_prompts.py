"""Chat prompts for training and evaluating EAGLE3 draft heads (seeded, no downloads).

Instruction templates crossed with subjects. Held-out prompts use subjects that never appear in
training, so an acceptance length measured on them is not a memorised answer.
``python -m qwen3lab.data.eagle3_prompts OUT.jsonl [--held-out]`` writes one ``{"prompt": ...}`` a line.
"""

from __future__ import annotations

import json
import random
import sys

TEMPLATES = [
    "Explain {s} in simple terms.",
    "Write a short paragraph about {s}.",
    "List three interesting facts about {s}.",
    "What are the main advantages and disadvantages of {s}?",
    "Give me a brief history of {s}.",
    "How would you describe {s} to a ten-year-old?",
    "Write a short poem about {s}.",
    "What should a beginner know about {s}?",
    "Summarize the most important ideas behind {s}.",
    "Write a short story that involves {s}.",
    "Why is {s} important?",
    "Give three tips related to {s}.",
]

SUBJECTS = [
    "photosynthesis", "the water cycle", "volcanoes", "the solar system", "gravity", "electricity",
    "the human heart", "vaccines", "climate change", "recycling", "the internet", "computers",
    "the Roman Empire", "ancient Egypt", "the printing press", "democracy", "money", "banks",
    "healthy eating", "sleep", "exercise", "meditation", "coffee", "tea", "bread baking", "gardening",
    "dogs", "cats", "bees", "whales", "rainforests", "deserts", "the ocean", "mountains", "rivers",
    "music", "painting", "chess", "football", "the Olympic Games", "libraries", "reading books",
    "learning a new language", "mathematics", "prime numbers", "programming in Python", "robots",
    "airplanes", "trains", "bicycles", "electric cars", "solar energy", "wind power", "the moon",
    "friendship", "time management", "public speaking", "saving money", "cooking pasta", "rain",
]
HELD_OUT_SUBJECTS = [
    "earthquakes", "the Great Wall of China", "honey", "penguins", "the violin", "rockets",
    "snow", "teamwork", "the microscope", "forests", "writing letters", "lighthouses",
]


def prompts(held_out: bool = False, limit: int | None = None, seed: int = 0) -> list[str]:
    subjects = HELD_OUT_SUBJECTS if held_out else SUBJECTS
    items = [t.format(s=s) for s in subjects for t in TEMPLATES]
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


if __name__ == "__main__":
    out = sys.argv[1]
    with open(out, "w") as f:
        for p in prompts(held_out="--held-out" in sys.argv):
            f.write(json.dumps({"prompt": p}) + "\n")
