"""Word banks for spoken scripts, split so that bench sentences can never occur in train/pref.

Every spoken sentence contains at least one entry of NAMES, PLACES or ITEMS. Each of these lists is partitioned by a
stable hash: the ``holdout`` share goes to bench only, the rest to train/pref only. Hence no bench sentence can
equal a train sentence (they differ in that word), whatever the templates.
"""
from __future__ import annotations

import math
import re

from .sources.speech import stable_hash

NAMES = [
    "Nora", "Elias", "Maya", "Tobias", "Lena", "Oscar", "Ines", "Hugo", "Clara", "Felix", "Iris", "Jonas",
    "Greta", "Marco", "Alma", "Victor", "Rosa", "Anton", "Mila", "Leon", "Hanna", "David", "Lucia", "Samuel",
    "Vera", "Peter", "Julia", "Martin", "Eva", "Simon", "Sofia", "Arthur", "Helen", "Daniel", "Olga", "Robert",
    "Emma", "Frank", "Laura", "George", "Nina", "Henry", "Paula", "Isaac", "Ruth", "Walter", "Diana", "Carl",
]
PLACES = [
    "harbour", "library", "market", "station", "bakery", "museum", "garden", "bridge", "school", "hospital",
    "stadium", "theatre", "farm", "river bank", "post office", "town hall", "old mill", "bus depot",
    "lighthouse", "village square", "airport", "greenhouse", "fire station", "concert hall", "zoo", "castle",
    "boat yard", "train yard", "bookshop", "workshop", "hotel", "chapel",
]
ITEMS = [  # countable plural nouns
    "apples", "lanterns", "boats", "birds", "chairs", "candles", "bicycles", "baskets", "letters", "kites",
    "umbrellas", "bottles", "tickets", "ducks", "horses", "tables", "windows", "lamps", "boxes", "hats",
    "trees", "pumpkins", "flags", "drums", "bells", "shells", "stamps", "plates", "rabbits", "oranges",
    "violins", "clocks", "benches", "coins", "ladders", "maps",
]
EVENTS = [  # named occasions for entailment / factual consistency
    "the harvest fair", "the book sale", "the choir concert", "the chess tournament", "the flower show",
    "the science fair", "the charity run", "the film night", "the boat race", "the craft market",
    "the poetry reading", "the cooking class",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
HOURS = ["seven", "eight", "nine", "ten", "eleven", "noon", "one", "two", "three", "four", "five", "six"]
TOPICS = {  # common-keyword topics: topical words (Figure 4)
    "weather": ["rain", "storm", "cloud", "sunshine", "wind", "snow"],
    "travel": ["ticket", "suitcase", "platform", "passport", "journey", "map"],
    "cooking": ["soup", "oven", "recipe", "flour", "pepper", "kettle"],
    "music": ["guitar", "melody", "piano", "rhythm", "choir", "song"],
    "sport": ["football", "race", "team", "goal", "coach", "match"],
    "nature": ["forest", "river", "meadow", "mountain", "lake", "flower"],
    "school": ["teacher", "lesson", "homework", "pencil", "library", "exam"],
    "city": ["traffic", "tram", "street", "tower", "bridge", "market"],
}
STOPWORDS = set("""a an the and or but if then so of to in on at by for with from into onto over under about
after before again all am are as be been being both can could did do does each few had has have having he her here
hers him his how i is it its just me more most my no nor not now once only other our out own same she should some
such than that their them there these they this those through too up very was we were what when where which while
who whom why will would you your yours yesterday today tomorrow said says told one two three four five six seven eight
nine ten also every near""".split())

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = ["first", "second", "third", "fourth", "fifth"]


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return TENS[t] + (f"-{ONES[o]}" if o else "")
    h, r = divmod(n, 100)
    return f"{ONES[h]} hundred" + (f" and {number_words(r)}" if r else "")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 1}


def _split(xs: list[str], kind: str, holdout: float) -> tuple[list[str], list[str]]:
    order = sorted(xs, key=lambda x: stable_hash(kind, x))
    k = max(1, math.ceil(holdout * len(xs)))
    return order[:k], order[k:]


class Lexicon:
    """The word banks one split may use (bench: the held-out share of names/places/items; train/pref: the rest)."""

    def __init__(self, split: str, holdout: float):
        side = 0 if split == "bench" else 1
        self.names = _split(NAMES, "name", holdout)[side]
        self.places = _split(PLACES, "place", holdout)[side]
        self.items = _split(ITEMS, "item", holdout)[side]
        self.events = EVENTS
        self.days = DAYS
        self.hours = HOURS
        self.topics = TOPICS

    def pick(self, rng, xs: list[str], k: int | None = None):
        if k is None:
            return xs[int(rng.integers(len(xs)))]
        idx = rng.choice(len(xs), size=k, replace=False)
        return [xs[int(i)] for i in idx]
