"""Counting across clips (Table 2): how often an event occurs over all clips (Figure 8, frequency questions)."""
from __future__ import annotations

from ..sources.events import phrase, plural
from . import register
from .starter import count_beeps, is_starter
from .base import pick_event_target, wants_corpus_events, Draft, choose, join_and, scene_from_counts

QUESTIONS = [
    "How many times does {p} occur across all {n} audio clips?",
    "Count the {pl} in these {n} clips. How many are there in total?",
    "Across the {n} clips, how many {pl} do you hear altogether?",
    "What is the total number of {pl} over all of the clips?",
    "How many times in total can {p} be heard in the {n} recordings?",
]


def _corpus(ctx, rng, n):
    """PicoAudio-style rows with timestamps: count a label over n rows (the annotated occurrences)."""
    rows = ctx.corpora.with_events()
    if len(rows) < n:
        raise ValueError(f"corpus has {len(rows)} rows with events, need {n}")
    picks = [rows[int(i)] for i in rng.choice(len(rows), n, replace=False)]
    labels = sorted({e["label"] for r in picks for e in ctx.corpora.events_of(r)})
    target = labels[int(rng.integers(len(labels)))]
    per = [sum(e["label"] == target for e in ctx.corpora.events_of(r)) for r in picks]
    clips = [ctx.corpora.clip(ctx, r) for r in picks]
    total = sum(per)
    q = f"How many times does {target} occur across all {n} audio clips?"
    detail = join_and([f"{c} in clip {i + 1}" for i, c in enumerate(per)])
    ans = f"{target[0].upper() + target[1:]} occurs {total} {'time' if total == 1 else 'times'} in total: {detail}."
    # a count over all clips depends on every clip (a clip with none of the event is evidence too)
    return Draft(clips, q, ans, {"type": "count", "value": total, "tolerance": 0},
                 list(range(1, len(per) + 1)), extra={"target": target, "per_clip": per,
                                                                      "source": "corpus"})


@register("counting")
def generate(ctx, rng, n):
    if is_starter(ctx.cfg):
        return count_beeps(ctx, rng, n)  # the starter curriculum's variant (tasks/starter.py)
    if wants_corpus_events(ctx, rng):
        return _corpus(ctx, rng, n)
    target, others = pick_event_target(ctx, rng)
    per = [int(rng.integers(0, 4)) for _ in range(n)]
    if sum(per) == 0:
        per[int(rng.integers(n))] = int(rng.integers(1, 4))
    clips = []
    for c in per:
        counts = {target: c} if c else {}
        for l in ctx.lex.pick(rng, others, int(rng.integers(0 if c else 1, 3))):
            counts[l] = int(rng.integers(1, 3))
        clips.append(scene_from_counts(ctx, rng, counts))
    total = sum(per)
    q = choose(rng, QUESTIONS).format(p=phrase(target), pl=plural(target), n=n)
    detail = join_and([f"{c} in clip {i + 1}" for i, c in enumerate(per)])
    what = phrase(target) if total == 1 else f"{total} {plural(target)}"
    ans = choose(rng, [
        "{P} occurs {t} {times} in total: {d}.",
        "There {be} {w} in total ({d}).",
        "Altogether I count {w}: {d}.",
    ]).format(P=phrase(target)[0].upper() + phrase(target)[1:], t=total, times="time" if total == 1 else "times",
              be="is" if total == 1 else "are", w=what if total > 1 else f"1 ({phrase(target)})", d=detail)
    relevant = list(range(1, len(per) + 1))  # every clip is evidence for a count across clips
    return Draft(clips, q, ans, {"type": "count", "value": total, "tolerance": 0}, relevant,
                 extra={"target": target, "per_clip": per})
