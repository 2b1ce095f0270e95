"""Chronological Ordering (Table 2, Figure 5): arrange shuffled clips of one story in temporal order."""
from __future__ import annotations

from . import register
from .base import Draft, choose, letters

DAY = [
    "At six in the morning, {name} unlocked the doors of the {place}.",
    "At eight o'clock, {name} carried a box of {item} inside.",
    "At ten o'clock, the first visitors arrived at the {place}.",
    "At one in the afternoon, {name} finally sat down for lunch.",
    "At four in the afternoon, {name} sold the last of the {item}.",
    "At nine in the evening, {name} locked the {place} and walked home.",
]
WEEK = [
    "On Monday, {name} decided to repaint the {place}.",
    "On Tuesday, {name} bought brushes and a box of {item}.",
    "On Wednesday, rain kept everyone away from the {place}.",
    "On Thursday, {name} painted the front wall of the {place}.",
    "On Friday, friends came to help {name} with the {item}.",
    "On Saturday, the {place} opened again with a small party.",
]
QUESTIONS = [
    "These {n} audio clips were recorded in order but have been shuffled. Please arrange them chronologically.",
    "Put the {n} clips in the order in which the events happened.",
    "What is the correct chronological order of these clips?",
    "The clips tell one story out of order. List the clip numbers from the earliest event to the latest.",
]


@register("chronological_ordering")
def generate(ctx, rng, n):
    story = DAY if rng.random() < 0.5 else WEEK
    steps = sorted(int(i) for i in rng.choice(len(story), n, replace=False))
    name, place, item = ctx.lex.pick(rng, ctx.lex.names), ctx.lex.pick(rng, ctx.lex.places), \
        ctx.lex.pick(rng, ctx.lex.items)
    perm = rng.permutation(n)
    while n > 1 and all(int(p) == i for i, p in enumerate(perm)):
        perm = rng.permutation(n)
    # clip c (1-based) holds story step steps[perm[c-1]]
    speaker = ctx.pick_speakers(rng, 1)[0]
    clips = [ctx.speech(speaker, [story[steps[int(p)]].format(name=name, place=place, item=item)], rng,
                        story_step=int(p) + 1) for p in perm]
    order = [int(list(perm).index(r)) + 1 for r in range(n)]  # clip index of the r-th event
    q = choose(rng, QUESTIONS).format(n=n)
    seq = ", ".join(f"clip {c}" for c in order)
    ans = choose(rng, ["The chronological order is {s}.", "From earliest to latest: {s}.",
                       "The events happen in this order: {s}."]).format(s=seq)
    if rng.random() < 0.4:  # Figure 5: a multiple-choice variant with permutations as options
        import itertools

        perms = [list(p) for p in itertools.permutations(range(1, n + 1)) if list(p) != order]
        picked = [perms[int(i)] for i in rng.choice(len(perms), min(3, len(perms)), replace=False)]
        opts = picked + [order]
        idx = rng.permutation(len(opts))
        opts = [opts[int(i)] for i in idx]
        choices = [", ".join(map(str, o)) for o in opts]
        letter = letters(len(opts))[opts.index(order)]
        q = q + " Choose one option: " + " ".join(f"({l}) {c}" for l, c in zip(letters(len(opts)), choices))
        ans = f"({letter}) {choices[opts.index(order)]}. " + ans
        return Draft(clips, q, ans, {"type": "option", "value": letter}, list(range(1, n + 1)), choices=choices,
                     extra={"story": "day" if story is DAY else "week", "order": order})
    return Draft(clips, q, ans, {"type": "permutation", "value": order}, list(range(1, n + 1)),
                 extra={"story": "day" if story is DAY else "week", "order": order})
