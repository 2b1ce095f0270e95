"""Multi-Audio Entailment (Table 2, Figure 7): is a claim supported, contradicted or not addressed by the clips?"""
from __future__ import annotations

from ..text import number_words
from . import register
from .base import Draft, choose, filler, join_and
from .starter import is_starter, pitch_claim

ATTRS = ("day", "place", "time", "quantity")
QUESTIONS = [
    "Based on the clips, is the statement '{c}' supported?",
    "Taken together, do these clips support the claim: '{c}'? Answer Yes, No or Not enough information.",
    "Is the following statement true according to the audio clips: '{c}'?",
    "Considering all {n} clips, is it correct that {cl}?",
    "Do the speakers' statements entail the claim '{c}'?",
]


def _time(h: str) -> str:
    return "noon" if h == "noon" else f"{h} o'clock"


def _fact(attr, ev, v, rng):
    E = ev[0].upper() + ev[1:]
    if attr == "day":
        return choose(rng, [f"{E} takes place on {v}.", f"I heard that {ev} is on {v} this week."])
    if attr == "place":
        return choose(rng, [f"{E} will be held at the {v}.", f"This year {ev} moves to the {v}."])
    if attr == "time":
        return choose(rng, [f"{E} starts at {_time(v)}.", f"Doors open for {ev} at {_time(v)}."])
    return f"There will be {number_words(v[0])} {v[1]} at {ev}."


def _claim_part(attr, v):
    if attr == "quantity":
        return f"has {number_words(v[0])} {v[1]}"
    return {"day": f"is on {v}", "place": f"is held at the {v}", "time": f"starts at {_time(v)}"}[attr]


def _wrong(ctx, rng, attr, v):
    pools = {"day": ctx.lex.days, "place": ctx.lex.places, "time": ctx.lex.hours}
    if attr == "quantity":
        return (v[0] + int(rng.integers(2, 9)), v[1])
    return ctx.lex.pick(rng, [x for x in pools[attr] if x != v])


@register("entailment")
def generate(ctx, rng, n):
    if is_starter(ctx.cfg):
        return pitch_claim(ctx, rng, n)  # the starter curriculum's variant (tasks/starter.py)
    if ctx.author is not None and "entailment" in ctx.cfg.llm.tasks:
        from ..llm import authored_entailment

        return authored_entailment(ctx, rng, n)
    ev = ctx.lex.pick(rng, ctx.lex.events)
    truth = {"day": ctx.lex.pick(rng, ctx.lex.days), "place": ctx.lex.pick(rng, ctx.lex.places),
             "time": ctx.lex.pick(rng, ctx.lex.hours),
             "quantity": (int(rng.integers(3, 40)), ctx.lex.pick(rng, ctx.lex.items))}
    n_stated = min(n, 3)
    stated = list(ctx.lex.pick(rng, list(ATTRS), n_stated))
    order = rng.permutation(n)  # which clip states which attribute
    clip_of = {a: int(order[i]) + 1 for i, a in enumerate(stated)}
    speakers = ctx.pick_speakers(rng, n)
    clips = []
    for i in range(1, n + 1):
        sents = [filler(ctx, rng)]
        for a, c in clip_of.items():
            if c == i:
                sents.insert(int(rng.integers(0, 2)), _fact(a, ev, truth[a], rng))
        clips.append(ctx.speech(speakers[i - 1], sents, rng))
    label = str(rng.choice(["Yes", "No", "Not enough information"]))
    E = ev[0].upper() + ev[1:]
    if label == "Not enough information":
        a = ctx.lex.pick(rng, [x for x in ATTRS if x not in stated])
        used = [a]
        claim = f"{E} {_claim_part(a, truth[a])}"
        miss = {"day": "which day it is on", "place": "where it is held", "time": "when it starts",
                "quantity": f"how many {truth['quantity'][1]} there will be"}[a]
        ans = f"Not enough information, none of the clips says {miss}."
        relevant = list(range(1, n + 1))
    else:
        used = list(ctx.lex.pick(rng, stated, min(2, len(stated))))
        vals = {a: truth[a] for a in used}
        if label == "No":
            bad = ctx.lex.pick(rng, used)
            vals[bad] = _wrong(ctx, rng, bad, truth[bad])
        claim = f"{E} " + " and ".join(_claim_part(a, vals[a]) for a in used)
        says = join_and([f"clip {clip_of[a]} says it {_claim_part(a, truth[a])}" for a in used])
        if label == "Yes":
            ans = f"Yes, {says}."
        else:
            ans = (f"No, clip {clip_of[bad]} says it {_claim_part(bad, truth[bad])}, "
                   f"not that it {_claim_part(bad, vals[bad])}.")
        relevant = sorted({clip_of[a] for a in used})
    q = choose(rng, QUESTIONS).format(c=claim + ".", cl=claim[0].lower() + claim[1:], n=n)
    return Draft(clips, q, ans, {"type": "yesno", "value": label}, relevant,
                 extra={"claim": claim, "attributes_used": used, "stated": {a: clip_of[a] for a in stated},
                        "truth": {k: (list(v) if isinstance(v, tuple) else v) for k, v in truth.items()}})
