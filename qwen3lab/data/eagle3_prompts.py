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

# Used for training only (the held-out prompts keep TEMPLATES): more ways of asking, so that a draft
# learns the target's answering style rather than a dozen memorised openings.
TRAIN_TEMPLATES = [
    "Tell me about {s}.",
    "Describe {s} in a few sentences.",
    "What is the most surprising thing about {s}?",
    "Write a short dialogue between two friends about {s}.",
    "Explain how {s} works, step by step.",
    "What are common misconceptions about {s}?",
    "Write a short blog post introduction about {s}.",
    "Compare {s} with something similar.",
    "What questions do people often ask about {s}? Answer two of them.",
    "Write a limerick about {s}.",
    "How has {s} changed over time?",
    "Give a one-paragraph summary of {s} for a school report.",
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
    # more subjects, disjoint from the held-out ones
    "dinosaurs", "the Amazon river", "glaciers", "hurricanes", "tornadoes", "lightning", "rainbows",
    "the seasons", "tides", "coral reefs", "sharks", "dolphins", "elephants", "lions", "owls", "ants",
    "butterflies", "spiders", "frogs", "horses", "chickens", "farming", "wheat", "rice", "potatoes",
    "chocolate", "cheese", "pizza", "soup", "spices", "vegetarian food", "breakfast", "tea ceremonies",
    "the Renaissance", "the Industrial Revolution", "the Vikings", "ancient Greece", "the Silk Road",
    "castles", "pyramids", "the telephone", "the steam engine", "photography", "cinema", "television",
    "radio", "newspapers", "social media", "smartphones", "video games", "email", "passwords",
    "cybersecurity", "artificial intelligence", "machine learning", "databases", "spreadsheets",
    "the cloud", "open source software", "algorithms", "sorting", "binary numbers", "fractions",
    "geometry", "probability", "statistics", "algebra", "the Pythagorean theorem", "infinity",
    "atoms", "molecules", "magnets", "light", "sound", "heat", "friction", "the periodic table",
    "DNA", "cells", "bacteria", "the immune system", "the brain", "bones", "muscles", "nutrition",
    "vitamins", "drinking water", "first aid", "stress", "happiness", "kindness", "curiosity",
    "creativity", "leadership", "negotiation", "job interviews", "writing a resume", "budgeting",
    "investing", "taxes", "insurance", "shopping", "advertising", "small businesses", "startups",
    "cities", "villages", "bridges", "skyscrapers", "roads", "traffic", "public transport",
    "ships", "submarines", "satellites", "the International Space Station", "Mars", "Jupiter",
    "stars", "black holes", "comets", "telescopes", "maps", "compasses", "camping", "hiking",
    "swimming", "running", "yoga", "tennis", "basketball", "cycling races", "dance", "theater",
    "poetry", "novels", "fairy tales", "museums", "sculpture", "jazz", "the piano", "guitars",
    "drums", "singing", "birthdays", "holidays", "weddings", "family traditions", "pets",
    "houseplants", "cleaning a house", "cooking rice", "baking cookies", "knitting", "woodworking",
]
HELD_OUT_SUBJECTS = [
    "earthquakes", "the Great Wall of China", "honey", "penguins", "the violin", "rockets",
    "snow", "teamwork", "the microscope", "forests", "writing letters", "lighthouses",
]


def prompts(held_out: bool = False, limit: int | None = None, seed: int = 0) -> list[str]:
    if held_out:
        items = [t.format(s=s) for s in HELD_OUT_SUBJECTS for t in TEMPLATES]
    else:
        items = [t.format(s=s) for s in SUBJECTS for t in TEMPLATES + TRAIN_TEMPLATES]
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


if __name__ == "__main__":
    out = sys.argv[1]
    with open(out, "w") as f:
        for p in prompts(held_out="--held-out" in sys.argv):
            f.write(json.dumps({"prompt": p}) + "\n")
