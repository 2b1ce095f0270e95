"""Temporal Grounding (Table 2): find the clip and the time interval of a described event (Figure 8)."""
from __future__ import annotations

from ..sources.events import phrase
from ..text import ORDINALS
from . import register
from .starter_ablation import beep_clips, is_starter_ablation
from .base import pick_event_target, wants_corpus_events, Draft, choose, scene_from_counts

QUESTIONS = [
    "In which of the clips does the sound of '{p}' occur, and at what timestamp?",
    "Which clip contains {p}, and when does it start and end?",
    "Find {p} in these {n} clips: which clip is it in, and at what time does it happen?",
    "At which interval, and in which audio, do we hear {p}?",
    "One of the clips contains {p}. Give the clip number and the start and end time of the sound.",
]
ANSWERS = [
    "The sound of {p} occurs in clip {k}, from about {s:.2f} s to {e:.2f} s.",
    "It is in clip {k}: {p} starts at roughly {s:.2f} seconds and ends at about {e:.2f} seconds.",
    "You can hear {p} in the {o} clip, between {s:.2f} s and {e:.2f} s.",
]


def _corpus(ctx, rng, n):
    """PicoAudio-style rows with timestamps: a label heard once in one row and absent from the other rows."""
    rows = ctx.corpora.with_events()
    ev = ctx.corpora.events_of
    cands = [(r, e) for r in rows for e in ev(r) if [x["label"] for x in ev(r)].count(e["label"]) == 1]
    r0, e0 = cands[int(rng.integers(len(cands)))]
    rest = [r for r in rows if r is not r0 and e0["label"] not in {x["label"] for x in ev(r)}]
    if len(rest) < n - 1:
        raise ValueError(f"corpus has too few rows without {e0['label']!r}")
    k = int(rng.integers(1, n + 1))
    picks = [rest[int(i)] for i in rng.choice(len(rest), n - 1, replace=False)]
    picks.insert(k - 1, r0)
    clips = [ctx.corpora.clip(ctx, r) for r in picks]
    p = e0["label"]
    q = choose(rng, QUESTIONS).format(p=p, n=n)
    ans = ANSWERS[0].format(p=p, k=k, s=e0["start"], e=e0["end"])
    key = {"type": "interval", "clip": k, "start": e0["start"], "end": e0["end"]}
    return Draft(clips, q, ans, key, [k], extra={"target": p, "source": "corpus"})


@register("temporal_grounding")
def generate(ctx, rng, n, paraphrase: int = 0):
    if is_starter_ablation(ctx.cfg):
        return beep_clips(ctx, rng, n, paraphrase)  # the starter ablation's set-of-clips variant (tasks/starter_ablation.py)
    if wants_corpus_events(ctx, rng):
        return _corpus(ctx, rng, n)
    target, others = pick_event_target(ctx, rng)
    k = int(rng.integers(1, n + 1))
    clips = []
    for i in range(1, n + 1):
        counts = {l: 1 for l in ctx.lex.pick(rng, others, int(rng.integers(1, 3)))}
        if i == k:
            counts[target] = 1
        clips.append(scene_from_counts(ctx, rng, counts))
    ev = next(e for e in clips[k - 1].meta["events"] if e["label"] == target)
    p = phrase(target)
    q = choose(rng, QUESTIONS).format(p=p, n=n)
    ans = choose(rng, ANSWERS).format(p=p, k=k, s=ev["start"], e=ev["end"], o=ORDINALS[k - 1])
    key = {"type": "interval", "clip": k, "start": ev["start"], "end": ev["end"]}
    return Draft(clips, q, ans, key, [k], extra={"target": target})
