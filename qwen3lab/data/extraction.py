"""Structured extraction: a sentence describing a person record -> that record as one JSON object.

``make_examples(n, seed)`` returns ``{"messages": [...], "record": {...}}`` rows: a user turn with the
instruction and the sentence, an assistant turn with the compact JSON (keys in a fixed order).
Sentences come from several phrasings so the model must read, not copy positions.
``exact_match(text, record)`` is the score: the output parses as JSON and equals the record.
"""

from __future__ import annotations

import json
import random

FIRST = ["Maria", "John", "Aiko", "Lars", "Priya", "Omar", "Elena", "Kwame", "Sofia", "Chen", "Lucas", "Fatima",
         "Noah", "Ingrid", "Mateo", "Yuki", "Amara", "Pavel", "Leila", "Diego", "Hannah", "Ravi", "Zoe", "Tomas"]
LAST = ["Lopez", "Smith", "Tanaka", "Berg", "Sharma", "Haddad", "Petrova", "Mensah", "Rossi", "Wang", "Martin",
        "Khan", "Brown", "Olsen", "Garcia", "Sato", "Okafor", "Novak", "Nasser", "Silva", "Weber", "Iyer"]
CITIES = ["Lyon", "Boston", "Osaka", "Oslo", "Pune", "Cairo", "Sofia", "Accra", "Milan", "Shanghai", "Lisbon",
          "Denver", "Krakow", "Nairobi", "Quito", "Dublin", "Seoul", "Perth", "Tunis", "Hamburg"]
JOBS = ["nurse", "teacher", "engineer", "baker", "pilot", "lawyer", "chemist", "farmer", "designer", "plumber",
        "librarian", "architect", "dentist", "journalist", "carpenter", "translator"]
PHRASES = [
    "{name}, {age}, lives in {city} and works as a {job}.",
    "Meet {name}: a {age}-year-old {job} from {city}.",
    "In {city}, {name} has worked as a {job} for years and is now {age}.",
    "The {job} {name} ({age}) moved to {city} last spring.",
    "{name} is {age} years old, a {job} based in {city}.",
    "Our new neighbour in {city} is {name}, a {job} aged {age}.",
]
INSTRUCTION = "Extract name, age, city and job from the text as a JSON object.\nText: "


def make_record(rng: random.Random) -> dict:
    return {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": rng.randint(19, 79),
            "city": rng.choice(CITIES), "job": rng.choice(JOBS)}


def make_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        rec = make_record(rng)
        sentence = rng.choice(PHRASES).format(**rec)
        rows.append({"messages": [{"role": "user", "content": INSTRUCTION + sentence},
                                  {"role": "assistant", "content": json.dumps(rec)}], "record": rec})
    return rows


def exact_match(text: str, record: dict) -> bool:
    text = text.strip()
    if text.startswith("```"):  # a fenced answer still counts if the JSON inside is right
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text) == record
    except (json.JSONDecodeError, ValueError):
        return False
