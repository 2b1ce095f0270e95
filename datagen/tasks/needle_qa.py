"""Needle QA (Table 2): a key fact hidden in one of the clips; answer it (value, or the speaker's name)."""
from __future__ import annotations

from ..text import number_words
from . import register
from .base import Draft, choose, filler, fillers

Q_NUM = [
    "A key fact is mentioned in one of the clips. How many {item} did {name} count at the {place}?",
    "One of these clips mentions how many {item} {name} counted. What was the number?",
    "Somewhere in the {n} clips, someone reports a count of {item} at the {place}. How many were there?",
    "Listen for the number of {item} that {name} counted. What is it?",
]
Q_NAME = [
    "A key fact is mentioned in one of the clips. What is the name of the speaker who states the fact about the "
    "number of {item}?",
    "One speaker says how many {item} they counted. What is that speaker's name?",
    "Which person, by name, reports counting {item} at the {place}?",
    "Who mentions the number of {item}? Give the speaker's name.",
]


@register("needle_qa")
def generate(ctx, rng, n):
    speakers = ctx.pick_speakers(rng, n)
    k = int(rng.integers(1, n + 1))
    items = ctx.lex.pick(rng, ctx.lex.items, n + 1)  # items[0]: the needle; items[i]: clip i's distractor
    names = ctx.lex.pick(rng, ctx.lex.names, n + 1)
    place = ctx.lex.pick(rng, ctx.lex.places)
    num = int(rng.integers(3, 60))
    item = items[0]
    by_name = bool(rng.random() < 0.5)
    clips = []
    for i in range(1, n + 1):
        if by_name:
            sents = [f"Hello, my name is {names[i]}."]
            if i == k:
                sents.append(f"Yesterday I counted {number_words(num)} {item} at the {place}.")
            else:
                sents.append(f"Last week I repaired some {items[i]} near the {ctx.lex.pick(rng, ctx.lex.places)}.")
        else:
            if i == k:
                sents = [filler(ctx, rng, avoid_items=[item])]
                sents.insert(int(rng.integers(0, 2)), f"{names[0]} counted {number_words(num)} {item} at the {place}.")
            else:
                sents = fillers(ctx, rng, 2, avoid_items=[item], avoid_names=[names[0]])
        clips.append(ctx.speech(speakers[i - 1], sents, rng))
    if by_name:
        who = names[k]
        q = choose(rng, Q_NAME).format(item=item, place=place, n=n)
        ans = choose(rng, ["The speaker is {w}, in clip {k}, who counted {c} {i}.",
                           "It is {w}: in clip {k} {w} says they counted {c} {i} at the {p}."]).format(
            w=who, k=k, c=number_words(num), i=item, p=place)
        key = {"type": "value", "value": who, "aliases": [who.lower()], "clips": [k]}
    else:
        q = choose(rng, Q_NUM).format(item=item, name=names[0], place=place, n=n)
        ans = choose(rng, ["{name} counted {num} {i} at the {p}, as stated in clip {k}.",
                           "The number is {num} ({w}); it is mentioned in clip {k}."]).format(
            name=names[0], num=num, w=number_words(num), i=item, p=place, k=k)
        key = {"type": "value", "value": str(num), "aliases": [number_words(num)], "clips": [k]}
    return Draft(clips, q, ans, key, [k], extra={"variant": "name" if by_name else "number", "needle_clip": k})
