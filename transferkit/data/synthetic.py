"""Tasks the project generates itself, with exact answers.

`person_records`: free-form sentences about a person → one strict JSON record
`{"name": ..., "age": ..., "city": ..., "job": ...}` (keys in that order,
`json.dumps` spacing). A small base model paraphrases, reorders keys or adds
prose zero-shot, so exact match starts near 0 and measures what transfer
taught it. Generation is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..files import jsonl_text

FIRST = ["Ana", "Ben", "Chloe", "Daniel", "Elif", "Farah", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Marco", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Samuel", "Tariq", "Uma", "Victor", "Wen", "Ximena",
         "Yusuf", "Zoe", "Aisha", "Bruno", "Carmen", "Dmitri", "Esther", "Felix", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Silva", "Okafor", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Moreau", "Tanaka", "Rossi", "Petrov",
        "Garcia", "Andersen", "Mensah", "Kaur", "Dubois", "Novak", "Yilmaz", "Costa", "Lindqvist", "Mbeki",
        "Fischer", "Romero", "Sato", "Ibrahim", "Byrne", "Horvat", "Jansen", "Lopez", "Park", "Varga"]
CITIES = ["Lisbon", "Lagos", "Hanoi", "Berlin", "Beirut", "Krakow", "Lyon", "Osaka", "Turin", "Sofia", "Madrid",
          "Aarhus", "Accra", "Delhi", "Brussels", "Prague", "Izmir", "Porto", "Uppsala", "Durban", "Hamburg",
          "Seville", "Kyoto", "Cairo", "Cork", "Zagreb", "Utrecht", "Bilbao", "Busan", "Szeged"]
JOBS = ["nurse", "carpenter", "teacher", "pilot", "baker", "architect", "plumber", "chemist", "journalist",
        "electrician", "librarian", "dentist", "gardener", "translator", "mechanic", "photographer", "lawyer",
        "farmer", "pharmacist", "engineer", "tailor", "firefighter", "economist", "surgeon", "chef", "potter",
        "geologist", "accountant", "violinist", "welder"]
TEMPLATES = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}: {age} years old, works as a {job} in {city}.",
    "Living in {city}, {name} ({age}) earns a living as a {job}.",
    "At {age}, {name} is a {job} based in {city}.",
    "The {job} {name}, aged {age}, lives in {city}.",
    "{name}, {age}, {job}, {city}.",
    "Our new neighbour {name} moved to {city}; {first} is {age} and works as a {job}.",
    "In {city} there is a {job} called {name} who just turned {age}.",
    "{name} has worked as a {job} in {city} for years and is now {age}.",
    "Profile: {job} from {city}, {age} years of age, name {name}.",
    "I met {name} in {city} yesterday - a {age} year old {job}.",
    "{city} resident {name} ({job}) celebrated turning {age} last week.",
]
PROMPT = "Convert to a JSON record with keys name, age, city, job:\n{sentence}"


def person_record(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {"name": f"{first} {last}", "age": rng.randint(19, 88), "city": rng.choice(CITIES), "job": rng.choice(JOBS)}


def person_example(rng: random.Random) -> dict:
    record = person_record(rng)
    sentence = rng.choice(TEMPLATES).format(first=record["name"].split()[0], **record)
    return {"prompt": PROMPT.format(sentence=sentence), "completion": json.dumps(record)}


def person_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [person_example(rng) for _ in range(n)]


QUICKSTART_SPLITS = {"train": (800, 1), "validation": (40, 2), "test": (100, 3)}  # name: (rows, seed)


def write_quickstart(folder: str | Path) -> list[Path]:
    """Write data/quickstart/{train,validation,test}.jsonl; test prompts never occur in train."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_prompts: set[str] = set()
    written = []
    for split, (n, seed) in QUICKSTART_SPLITS.items():
        rows = person_records(n * 2, seed)
        if split != "train":
            rows = [r for r in rows if r["prompt"] not in train_prompts]
        rows = rows[:n]
        if split == "train":
            train_prompts = {r["prompt"] for r in rows}
        path = folder / f"{split}.jsonl"
        path.write_text(jsonl_text(rows), encoding="utf-8")
        written.append(path)
    return written


# ---------------------------------------------------------------- topic classification

TOPICS = {
    "sport": ["The {team} won the final after extra time.", "She ran the marathon in under three hours.",
              "Our coach wants more passing and less dribbling.", "The referee showed two yellow cards before half time.",
              "He finally beat his personal best on the track.", "The {team} signed a new goalkeeper this summer."],
    "food": ["The soup needs more salt and a little lemon.", "We baked bread with rye flour and seeds.",
             "This curry is too spicy for the children.", "She grilled the fish with garlic and butter.",
             "The bakery on the corner sells the best croissants.", "Add the onions once the oil is hot."],
    "travel": ["Our train to {city} leaves at seven in the morning.", "We lost our luggage on the way to {city}.",
               "The hostel near the harbour was cheap and clean.", "He booked a window seat for the long flight.",
               "Remember to renew your passport before the trip.", "The ferry to the island was cancelled by the storm."],
    "weather": ["Heavy rain is expected over {city} tonight.", "The fog did not lift until noon.",
                "It was the hottest July on record.", "Strong winds knocked down trees along the coast.",
                "Snow is likely on the hills by the weekend.", "A cold front will bring clear skies tomorrow."],
}
TEAMS = ["Lions", "Rovers", "Falcons", "Harriers", "United", "Wanderers"]
OPENERS = ["", "Apparently, ", "My friend said that ", "In the news today: ", "Honestly, ", "As expected, "]


def topic_examples(n: int, seed: int) -> list[dict]:
    """Sentences labelled with one of four topics (sport, food, travel, weather)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        sentence = rng.choice(TOPICS[label]).format(team=rng.choice(TEAMS), city=rng.choice(CITIES))
        opener = rng.choice(OPENERS)
        text = opener + (sentence[0].lower() + sentence[1:] if opener else sentence)
        rows.append({"text": text, "label": label})
    return rows


TOPIC_SPLITS = {"train": (400, 11), "validation": (40, 12), "test": (100, 13)}


def write_topics(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (n, seed) in TOPIC_SPLITS.items():
        path = folder / f"{split}.jsonl"
        path.write_text(jsonl_text(topic_examples(n, seed)), encoding="utf-8")
        written.append(path)
    return written
