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


# ---------------------------------------------------------------- preference pairs from the quickstart task

# The mistakes a model that has partly learned the task makes (SmolLM2-135M after 15 LoRA steps on the quickstart:
# "library" for librarian, "Belgium" for Brussels, "Bruno" for Bruno Byrne; docs/align.md): the first name alone,
# the city's country, the job's field of work.
COUNTRY = {"Lisbon": "Portugal", "Lagos": "Nigeria", "Hanoi": "Vietnam", "Berlin": "Germany", "Beirut": "Lebanon",
           "Krakow": "Poland", "Lyon": "France", "Osaka": "Japan", "Turin": "Italy", "Sofia": "Bulgaria",
           "Madrid": "Spain", "Aarhus": "Denmark", "Accra": "Ghana", "Delhi": "India", "Brussels": "Belgium",
           "Prague": "Czechia", "Izmir": "Turkey", "Porto": "Portugal", "Uppsala": "Sweden", "Durban": "South Africa",
           "Hamburg": "Germany", "Seville": "Spain", "Kyoto": "Japan", "Cairo": "Egypt", "Cork": "Ireland",
           "Zagreb": "Croatia", "Utrecht": "Netherlands", "Bilbao": "Spain", "Busan": "South Korea",
           "Szeged": "Hungary"}
FIELD_OF_WORK = {"nurse": "nursing", "carpenter": "carpentry", "teacher": "teaching", "pilot": "aviation",
                 "baker": "bakery", "architect": "architecture", "plumber": "plumbing", "chemist": "chemistry",
                 "journalist": "journalism", "electrician": "electricity", "librarian": "library",
                 "dentist": "dentistry", "gardener": "gardening", "translator": "translation",
                 "mechanic": "mechanics", "photographer": "photography", "lawyer": "law", "farmer": "farming",
                 "pharmacist": "pharmacy", "engineer": "engineering", "tailor": "tailoring",
                 "firefighter": "firefighting", "economist": "economics", "surgeon": "surgery", "chef": "cooking",
                 "potter": "pottery", "geologist": "geology", "accountant": "accounting", "violinist": "violin",
                 "welder": "welding"}
WRONG_FIELDS = ("name", "city", "job")


def wrong_record(record: dict, field: str) -> dict:
    """`record` with one plausible mistake in `field`: the first name alone, the city's country, or the job's
    field of work (`COUNTRY`, `FIELD_OF_WORK`)."""
    wrong = dict(record)
    if field == "name":
        wrong["name"] = record["name"].split()[0]
    elif field == "city":
        wrong["city"] = COUNTRY[record["city"]]
    else:
        wrong["job"] = FIELD_OF_WORK[record["job"]]
    return wrong


def preference_pairs(rows: list[dict]) -> list[dict]:
    """Quickstart rows (prompt, completion) as preference pairs: chosen = the correct record, rejected = the same
    record with one field wrong (`wrong_record`), the fields taking turns; `slice` names the wrong field."""
    pairs = []
    for i, row in enumerate(rows):
        field = WRONG_FIELDS[i % len(WRONG_FIELDS)]
        record = json.loads(row["completion"])
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"],
                      "rejected": json.dumps(wrong_record(record, field)), "slice": field})
    return pairs


def write_quickstart_preference(source: str | Path, folder: str | Path) -> list[Path]:
    """data/quickstart-preference/{train,validation,test}.jsonl from data/quickstart's splits of the same names:
    the same prompts, so a DPO run's test pairs are prompts no split before it trained on."""
    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split in QUICKSTART_SPLITS:
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        path = folder / f"{split}.jsonl"
        path.write_text(jsonl_text(preference_pairs(rows)), encoding="utf-8")
        written.append(path)
    return written


# ---------------------------------------------------------------- topic classification

TOPICS = {
    "sport": ["The {team} won the final after extra time.", "{name} ran the marathon in under three hours.",
              "Our coach wants the {team} to pass more and dribble less.",
              "The referee showed {name} two yellow cards before half time.",
              "{name} finally beat a personal best on the track.", "The {team} signed a new goalkeeper this summer.",
              "The {team} lost at home for the first time this season.", "{name} swims forty lengths every morning.",
              "Tickets for the {team} derby sold out in an hour.", "{name} scored twice in the second half."],
    "food": ["{name} says the soup needs more salt and a little lemon.", "We baked rye bread with seeds for {name}.",
             "This curry from {city} is too spicy for the children.", "{name} grilled the fish with garlic and butter.",
             "The bakery on the corner sells the best croissants in {city}.", "{name} adds the onions once the oil is hot.",
             "The market in {city} has the ripest tomatoes.", "{name} makes pancakes with buttermilk on Sundays.",
             "Let the dough rest before {name} rolls it out.", "The restaurant in {city} serves dumplings all night."],
    "travel": ["Our train to {city} leaves at seven in the morning.", "We lost our luggage on the way to {city}.",
               "The hostel near the harbour in {city} was cheap and clean.", "{name} booked a window seat for the flight.",
               "{name} must renew the passport before the trip.", "The ferry from {city} was cancelled by the storm.",
               "{name} took the night bus across the border.", "The queue at passport control in {city} took an hour.",
               "{name} rented a bicycle to explore the old town.", "Our guide in {city} spoke four languages."],
    "weather": ["Heavy rain is expected over {city} tonight.", "The fog over {city} did not lift until noon.",
                "It was the hottest July on record in {city}.", "Strong winds knocked down trees near {city}.",
                "Snow is likely on the hills above {city} by the weekend.", "A cold front will bring clear skies to {city}.",
                "{name} got soaked in the thunderstorm on the way home.", "Frost covered the fields outside {city}.",
                "The forecast for {city} promises sunshine all week.", "{name} checked the forecast: hail by evening."],
}
TEAMS = ["Lions", "Rovers", "Falcons", "Harriers", "United", "Wanderers", "Comets", "Pirates", "Dragons", "Rangers"]
OPENERS = ["", "Apparently, ", "My friend said that ", "In the news today: ", "Honestly, ", "As expected, "]


def topic_sentences(topic: str) -> list[str]:
    """Every distinct sentence of `topic`: each template with each filler and opener, in a fixed order."""
    sentences = []
    for template in TOPICS[topic]:
        fillers = TEAMS if "{team}" in template else FIRST if "{name}" in template else CITIES
        for filler, opener in ((f, o) for f in fillers for o in OPENERS):
            sentence = template.format(team=filler, name=filler, city=filler)
            lower = opener and not template.startswith("{")  # "Apparently, the Lions …", but "Apparently, Ines …"
            sentences.append(opener + (sentence[0].lower() + sentence[1:] if lower else sentence))
    return list(dict.fromkeys(sentences))


def topic_splits(sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """Balanced topic classification splits ({split: rows}) that share no sentence: each topic's sentences are
    shuffled once and dealt out in disjoint runs, a quarter of every split per topic."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    pools = {topic: rng.sample(topic_sentences(topic), len(topic_sentences(topic))) for topic in topics}
    splits: dict[str, list[dict]] = {}
    for name, n in sizes.items():
        rows = []
        for i, topic in enumerate(topics):
            take = n // len(topics) + (i < n % len(topics))
            rows += [{"text": text, "label": topic} for text in pools[topic][:take]]
            pools[topic] = pools[topic][take:]
        rng.shuffle(rows)
        splits[name] = rows
    return splits


def topic_examples(n: int, seed: int) -> list[dict]:
    """n sentences labelled with one of four topics (sport, food, travel, weather), balanced, no repeats."""
    return topic_splits({"rows": n}, seed)["rows"]


TOPIC_SPLITS = {"train": 400, "validation": 40, "test": 100}
TOPIC_SEED = 11


def write_topics(folder: str | Path) -> list[Path]:
    """Write data/topics/{train,validation,test}.jsonl: no sentence occurs in two splits."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in topic_splits(TOPIC_SPLITS, TOPIC_SEED).items():
        path = folder / f"{split}.jsonl"
        path.write_text(jsonl_text(rows), encoding="utf-8")
        written.append(path)
    return written
