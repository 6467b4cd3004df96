"""Deterministic generation of the stdlib's sequence-task data sets.

The sequence tasks of Looking Inward ("What are the next 5 animals in the following text?") need many
items that differ only in which words appear in what order. They are generated here, from word lists
written for this project, by a counter-mode SHA-256 stream: the same code gives the same bytes on any
machine and any Python version (unlike `random`, whose algorithms may change), so the committed files
can be checked against a fresh generation.

    python -m intro.stdlib.datagen            # rewrite stdlib/data/{animals,colors,...}.jsonl
    python -m intro.stdlib.datagen --check    # exit 1 if the committed files differ

`split_for` assigns every item of every stdlib data set (generated or written by hand) to "train" or
"val" from a hash of its id alone, so adding items never moves existing ones between splits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from intro.stdlib import taskgen

ITEMS_PER_TASK = 600
# Held-out tasks get enough items for at least 500 in their test part (Binder et al. 2024 measure about 1000
# per task; issue 11, item 5): about 560 of 2800 ids fall in "val".
HELD_OUT_ITEMS = 2800
HELD_OUT_SEQUENCES = ("animals", "english_words")
HAND_WRITTEN = 64  # the first rows of the templated tasks' files (stdlib/taskgen.py), written by hand
MIN_LENGTH, MAX_LENGTH = 6, 10
TRAIN_PERCENT = 80
DATA_DIR = Path(__file__).resolve().parent / "data"

ANIMALS = (
    "dog", "cat", "horse", "cow", "pig", "sheep", "goat", "chicken", "duck", "goose",
    "turkey", "rabbit", "mouse", "rat", "hamster", "squirrel", "fox", "wolf", "bear", "deer",
    "moose", "elk", "bison", "camel", "llama", "alpaca", "donkey", "zebra", "giraffe", "elephant",
    "rhinoceros", "hippopotamus", "lion", "tiger", "leopard", "cheetah", "jaguar", "panther", "lynx", "hyena",
    "monkey", "gorilla", "chimpanzee", "orangutan", "baboon", "lemur", "kangaroo", "koala", "wombat", "platypus",
    "sloth", "armadillo", "anteater", "hedgehog", "porcupine", "beaver", "otter", "badger", "skunk", "raccoon",
    "weasel", "ferret", "mole", "bat", "whale", "dolphin", "seal", "walrus", "shark", "octopus",
    "squid", "crab", "lobster", "shrimp", "jellyfish", "starfish", "salmon", "trout", "tuna", "eel",
    "frog", "toad", "turtle", "tortoise", "lizard", "iguana", "snake", "crocodile", "alligator", "eagle",
    "hawk", "falcon", "owl", "parrot", "penguin", "flamingo", "swan", "pelican", "ostrich", "peacock",
    "crow", "raven", "pigeon", "sparrow", "robin", "seagull", "bee", "ant", "butterfly", "moth",
    "spider", "beetle", "snail", "worm", "panda", "reindeer", "antelope", "gazelle", "meerkat", "mongoose",
    "chameleon", "buffalo", "hare", "heron", "woodpecker", "vulture", "stingray", "seahorse", "grasshopper", "ladybug",
)  # fmt: skip

COLORS = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    "gray", "violet", "indigo", "crimson", "scarlet", "maroon", "burgundy", "magenta", "fuchsia", "lavender",
    "lilac", "mauve", "plum", "turquoise", "teal", "cyan", "aqua", "navy", "azure", "cobalt",
    "sapphire", "emerald", "jade", "olive", "lime", "mint", "chartreuse", "khaki", "beige", "tan",
    "ivory", "cream", "gold", "silver", "bronze", "copper", "amber", "ochre", "mustard", "peach",
    "coral", "salmon", "apricot", "rust", "sienna", "umber", "chocolate", "charcoal", "slate", "periwinkle",
    "cerulean", "vermilion", "saffron", "lemon", "ruby", "rose", "blush", "sand", "taupe", "ebony",
    "pearl", "orchid",
)  # fmt: skip

COUNTRIES = (
    "Afghanistan", "Albania", "Algeria", "Andorra", "Angola", "Argentina", "Armenia", "Australia", "Austria",
    "Azerbaijan", "Bahamas", "Bahrain", "Bangladesh", "Barbados", "Belarus", "Belgium", "Belize", "Benin",
    "Bhutan", "Bolivia", "Botswana", "Brazil", "Brunei", "Bulgaria", "Burundi", "Cambodia", "Cameroon",
    "Canada", "Chad", "Chile", "China", "Colombia", "Comoros", "Croatia", "Cuba", "Cyprus", "Czechia",
    "Denmark", "Djibouti", "Dominica", "Ecuador", "Egypt", "Eritrea", "Estonia", "Eswatini", "Ethiopia",
    "Fiji", "Finland", "France", "Gabon", "Gambia", "Georgia", "Germany", "Ghana", "Greece", "Grenada",
    "Guatemala", "Guinea", "Guyana", "Haiti", "Honduras", "Hungary", "Iceland", "India", "Indonesia",
    "Iran", "Iraq", "Ireland", "Israel", "Italy", "Jamaica", "Japan", "Jordan", "Kazakhstan", "Kenya",
    "Kiribati", "Kuwait", "Kyrgyzstan", "Laos", "Latvia", "Lebanon", "Lesotho", "Liberia", "Libya",
    "Liechtenstein", "Lithuania", "Luxembourg", "Madagascar", "Malawi", "Malaysia", "Maldives", "Mali",
    "Malta", "Mauritania", "Mauritius", "Mexico", "Moldova", "Monaco", "Mongolia", "Montenegro", "Morocco",
    "Mozambique", "Myanmar", "Namibia", "Nauru", "Nepal", "Netherlands", "Nicaragua", "Niger", "Nigeria",
    "Norway", "Oman", "Pakistan", "Palau", "Panama", "Paraguay", "Peru", "Philippines", "Poland",
    "Portugal", "Qatar", "Romania", "Russia", "Rwanda", "Samoa", "Senegal", "Serbia", "Seychelles",
    "Singapore", "Slovakia", "Slovenia", "Somalia", "Spain", "Sudan", "Suriname", "Sweden", "Switzerland",
    "Syria", "Tajikistan", "Tanzania", "Thailand", "Togo", "Tonga", "Tunisia", "Turkey", "Turkmenistan",
    "Tuvalu", "Uganda", "Ukraine", "Uruguay", "Uzbekistan", "Vanuatu", "Venezuela", "Vietnam", "Yemen",
    "Zambia", "Zimbabwe", "New Zealand", "South Africa", "South Korea", "North Korea", "Sri Lanka",
    "Saudi Arabia", "United States", "United Kingdom", "Costa Rica", "El Salvador", "Sierra Leone",
    "Papua New Guinea", "Cape Verde", "North Macedonia", "Dominican Republic", "San Marino",
    "Equatorial Guinea", "Burkina Faso", "Solomon Islands", "Marshall Islands", "United Arab Emirates",
    "Central African Republic",
)  # fmt: skip

ENGLISH_WORDS = (
    "table", "window", "garden", "river", "mountain", "bread", "coffee", "letter", "pencil", "bottle",
    "chair", "kitchen", "doctor", "teacher", "village", "market", "bridge", "forest", "island", "candle",
    "blanket", "button", "pocket", "ladder", "hammer", "basket", "mirror", "carpet", "ticket", "engine",
    "wheel", "rocket", "planet", "cloud", "thunder", "winter", "summer", "autumn", "morning", "evening",
    "honey", "butter", "cheese", "apple", "lemon", "onion", "potato", "tomato", "carrot", "pepper",
    "music", "story", "picture", "number", "question", "answer", "problem", "reason", "moment", "minute",
    "family", "friend", "neighbor", "stranger", "child", "parent", "sister", "brother", "uncle", "cousin",
    "money", "price", "office", "meeting", "project", "report", "message", "phone", "screen", "paper",
    "street", "corner", "station", "airport", "harbor", "castle", "temple", "tower", "fence", "gate",
    "shadow", "silence", "courage", "freedom", "wisdom", "memory", "promise", "secret", "journey", "victory",
    "run", "walk", "jump", "swim", "climb", "throw", "catch", "build", "break", "carry",
    "listen", "speak", "whisper", "shout", "laugh", "smile", "cry", "sleep", "dream", "wake",
    "cook", "bake", "wash", "clean", "paint", "draw", "write", "read", "sing", "dance",
    "open", "close", "begin", "finish", "follow", "lead", "borrow", "lend", "remember", "forget",
    "push", "pull", "lift", "drop", "hide", "search", "find", "lose", "win", "wander",
    "happy", "angry", "quiet", "loud", "bright", "dark", "heavy", "light", "gentle", "rough",
    "early", "late", "ancient", "modern", "simple", "strange", "famous", "honest", "clever", "brave",
    "warm", "cold", "soft", "hard", "sweet", "bitter", "empty", "full", "narrow", "wide",
    "tiny", "huge", "round", "flat", "sharp", "smooth", "busy", "lazy", "proud", "humble",
    "quick", "slow", "fresh", "stale", "rich", "poor", "clear", "cloudy", "wild", "calm",
    "always", "never", "often", "rarely", "today", "tomorrow", "yesterday", "soon", "perhaps", "almost",
    "above", "below", "between", "behind", "beyond", "inside", "outside", "under", "across", "around",
    "blue", "green", "golden", "silver", "purple", "orange", "yellow", "scarlet", "violet", "crimson",
    "ocean", "desert", "valley", "meadow", "canyon", "glacier", "volcano", "beach", "lake", "stream",
    "violin", "guitar", "piano", "trumpet", "drum", "flute", "song", "poem", "novel", "chapter",
    "horse", "rabbit", "eagle", "salmon", "spider", "tiger", "turtle", "sparrow", "dolphin", "beetle",
    "shirt", "jacket", "boot", "scarf", "glove", "hat", "dress", "belt", "ring", "necklace",
    "soup", "salad", "pizza", "noodle", "rice", "cookie", "sugar", "salt", "vinegar", "garlic",
    "train", "bicycle", "truck", "boat", "plane", "wagon", "subway", "taxi", "ferry", "scooter",
    "idea", "plan", "habit", "choice", "chance", "danger", "effort", "energy", "balance", "pattern",
    "kingdom", "empire", "hamlet", "nation", "border", "capital", "county", "province", "harvest", "festival",
    "lantern", "compass", "anchor", "feather", "pebble", "marble", "crystal", "velvet", "copper", "timber",
)  # fmt: skip

SEQUENCE_TASKS: Mapping[str, Sequence[str]] = {
    "animals": ANIMALS,
    "colors": COLORS,
    "countries": COUNTRIES,
    "english_words": ENGLISH_WORDS,
}
DIGITS = tuple(str(d) for d in range(10))


# ---------------------------------------------------------------------------------------------------
# Deterministic randomness


def _stream(seed: str) -> Iterator[int]:
    """Unsigned 32-bit integers from SHA-256 in counter mode: identical everywhere, forever."""
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        for start in range(0, len(digest), 4):
            yield int.from_bytes(digest[start : start + 4], "big")
        counter += 1


def _below(stream: Iterator[int], bound: int) -> int:
    """A uniform integer in [0, bound), by rejection so no value is favoured."""
    limit = (2**32 // bound) * bound
    while True:
        value = next(stream)
        if value < limit:
            return value % bound


def _sample(stream: Iterator[int], pool: Sequence[str], count: int) -> list[str]:
    """`count` distinct items of `pool` in random order (a partial Fisher-Yates shuffle)."""
    items = list(pool)
    for i in range(count):
        j = i + _below(stream, len(items) - i)
        items[i], items[j] = items[j], items[i]
    return items[:count]


def split_for(item_id: str) -> str:
    """ "train" for about 80% of ids and "val" for the rest, decided by the id alone."""
    bucket = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") % 100
    return "train" if bucket < TRAIN_PERCENT else "val"


# ---------------------------------------------------------------------------------------------------
# Items


def _item(task: str, index: int, sequence: list[str]) -> dict[str, Any]:
    item_id = f"{task}-{index:04d}"
    return {"id": item_id, "split": split_for(item_id), "sequence": ", ".join(sequence)}


def word_sequence_rows(
    task: str, vocabulary: Sequence[str], count: int = ITEMS_PER_TASK
) -> list[dict[str, Any]]:
    """`count` items, each a sequence of 6-10 distinct words; no two items share a sequence."""
    stream = _stream(task)
    seen: set[tuple[str, ...]] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < count:
        length = MIN_LENGTH + _below(stream, MAX_LENGTH - MIN_LENGTH + 1)
        sequence = _sample(stream, vocabulary, length)
        if tuple(sequence) not in seen:
            seen.add(tuple(sequence))
            rows.append(_item(task, len(rows), sequence))
    return rows


def number_rows(count: int = ITEMS_PER_TASK) -> list[dict[str, Any]]:
    """`count` items, each a sequence of 6-10 one-digit numbers (repeats allowed); all sequences differ."""
    stream = _stream("numbers")
    seen: set[tuple[str, ...]] = set()
    rows: list[dict[str, Any]] = []
    while len(rows) < count:
        length = MIN_LENGTH + _below(stream, MAX_LENGTH - MIN_LENGTH + 1)
        sequence = [DIGITS[_below(stream, len(DIGITS))] for _ in range(length)]
        if tuple(sequence) not in seen:
            seen.add(tuple(sequence))
            rows.append(_item("numbers", len(rows), sequence))
    return rows


def templated_rows(
    task: str, hand_written: Sequence[Mapping[str, Any]], count: int = HELD_OUT_ITEMS
) -> list[Any]:
    """The hand-written rows, then generated ones (stdlib/taskgen.py) up to `count`, none repeating the
    `unique` field of an earlier row."""
    make, unique = taskgen.GENERATORS[task]
    stream = _stream(task)
    rows: list[Any] = list(hand_written)
    seen = {row[unique] for row in rows}
    while len(rows) < count:
        item_id = f"{task}-{len(rows):04d}"
        row = make(lambda pool: pool[_below(stream, len(pool))], len(rows))
        if row[unique] not in seen:
            seen.add(row[unique])
            rows.append({"id": item_id, "split": split_for(item_id), **row})
    return rows


def render_jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    """One compact JSON object per line, keys in insertion order, UTF-8 text kept as is."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def generated_files() -> dict[str, str]:
    """File name -> content of every generated data file."""
    files = {
        f"{task}.jsonl": render_jsonl(word_sequence_rows(task, words, items_of(task)))
        for task, words in SEQUENCE_TASKS.items()
    }
    files["numbers.jsonl"] = render_jsonl(number_rows(items_of("numbers")))
    for task in taskgen.GENERATORS:
        files[f"{task}.jsonl"] = render_jsonl(templated_rows(task, _hand_written(task)))
    return files


def items_of(task: str) -> int:
    """How many items a generated sequence task has: more for the held-out ones (numbers included)."""
    return HELD_OUT_ITEMS if task in (*HELD_OUT_SEQUENCES, "numbers") else ITEMS_PER_TASK


def _hand_written(task: str) -> list[dict[str, Any]]:
    lines = (DATA_DIR / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()[:HAND_WRITTEN]
    return [json.loads(line) for line in lines]


def stale_files(data_dir: Path = DATA_DIR) -> list[str]:
    """Generated files whose committed copy is missing or differs from a fresh generation."""
    stale = []
    for name, content in generated_files().items():
        path = data_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    return stale


def write_files(data_dir: Path = DATA_DIR) -> list[Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in generated_files().items():
        path = data_dir / name
        path.write_text(content, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files instead of writing them")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.data_dir)
        for name in stale:
            print(f"stale: {args.data_dir / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_files(args.data_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
