"""Factual Consistency (Table 2, Figure 3): verify a fact across clips and find the clips that get it right."""
from __future__ import annotations

from ..text import number_words
from . import register
from .base import Draft, choose, filler, join_and


def _subject(ctx, rng):
    if rng.random() < 0.5:
        name = ctx.lex.pick(rng, ctx.lex.names)
        lo, hi = 18, 90
        return (f"{name}'s age", lambda v: choose(rng, [f"{name} is {number_words(v)} years old.",
                                                        f"My neighbour {name} turned {number_words(v)} this year."]),
                "age", lo, hi, f"{name}")
    place, item = ctx.lex.pick(rng, ctx.lex.places), ctx.lex.pick(rng, ctx.lex.items)
    return (f"the number of {item} at the {place}",
            lambda v: choose(rng, [f"The {place} has exactly {number_words(v)} {item}.",
                                   f"Someone counted {number_words(v)} {item} at the {place}."]),
            "count", 3, 60, f"the {place}")


@register("factual_consistency")
def generate(ctx, rng, n):
    if ctx.author is not None and "factual_consistency" in ctx.cfg.llm.tasks:
        from ..llm import authored_factual

        return authored_factual(ctx, rng, n)
    subject, say, kind, lo, hi, who = _subject(ctx, rng)
    truth = int(rng.integers(lo, hi))
    if n == 2:
        agree = bool(rng.random() < 0.5)
        d = int(rng.integers(2, 12))
        other = truth + d if (truth - d < lo or rng.random() < 0.5) else truth - d
        vals = [truth, truth if agree else other]
    else:
        m = n // 2 + 1
        right = sorted(int(i) + 1 for i in rng.choice(n, m, replace=False))
        wrongs = [truth + d for d in rng.choice([d for d in range(-15, 16) if d and lo <= truth + d <= hi + 20],
                                                n - m, replace=False)]
        it = iter(int(w) for w in wrongs)
        vals = [truth if i in right else next(it) for i in range(1, n + 1)]
    speakers = ctx.pick_speakers(rng, n)
    clips = []
    for i, v in enumerate(vals, 1):
        sents = [filler(ctx, rng)]
        sents.insert(int(rng.integers(0, 2)), say(int(v)))
        clips.append(ctx.speech(speakers[i - 1], sents, rng))
    if n == 2:
        q = choose(rng, [f"Do the two clips agree about {subject}?",
                         f"Are clip 1 and clip 2 consistent about {subject}?",
                         f"Is the information about {subject} the same in both clips?"])
        ans = (f"Yes, both clips give {subject} as {vals[0]}." if agree else
               f"No, clip 1 gives {subject} as {vals[0]} but clip 2 says {vals[1]}.")
        return Draft(clips, q, ans, {"type": "yesno", "value": "Yes" if agree else "No"}, [1, 2],
                     extra={"subject": subject, "values": vals})
    q = choose(rng, [
        f"The clips state {subject}, but they do not all agree. Assuming the majority is right, what is the correct "
        "value, and which clips contain the correct information?",
        f"Some clips give a different value for {subject}. What value do most clips agree on, and which clips state it?",
        f"Verify {subject} across the {n} clips: which value is confirmed by the majority, and in which clips?",
    ])
    wrong_txt = join_and([f"clip {i} says {v}" for i, v in enumerate(vals, 1) if i not in right])
    ans = (f"The correct value is {truth}, stated in {join_and([f'clip {i}' for i in right])}; "
           f"by contrast, {wrong_txt}.")
    key = {"type": "value", "value": str(truth), "aliases": [number_words(truth)], "clips": right}
    return Draft(clips, q, ans, key, list(range(1, n + 1)), extra={"subject": subject, "values": vals, "kind": kind})
