"""Comparison/Difference (Table 2): compare and contrast two or more clips (Figures 9, 10)."""
from __future__ import annotations

from ..sources.music import compose
from . import register
from .base import Draft, choose, clip_ref, describe_counts, join_and, scene_from_counts

EVENT_Q = [
    "What is the difference between {a} and {b}?",
    "How do {a} and {b} differ in the sounds they contain?",
    "Compare {a} with {b}: what can be heard in each?",
    "Contrast the sound events in {a} and {b}.",
    "What distinguishes {a} from {b}?",
]
TEMPO_Q = [
    "Which clip has the {x} tempo?",
    "Which of these {n} music clips is played at the {x} tempo?",
    "Listening to all {n} clips, which one has the {x} beat?",
    "Which track maintains the {x} tempo from start to finish?",
]
MODE_Q = [
    "Which clip is in a {m} key?",
    "Only one of these {n} clips is in a {m} key. Which one?",
    "Which track sounds like it is in a {m} key, based on its tonal colour?",
    "One clip uses a {m} mode while the others do not. Which clip is it?",
]


def _events(ctx, rng, n):
    labels = ctx.events.labels()
    if len(labels) < 2 * 2:
        raise ValueError("too few event labels for comparison")
    per = [list(ctx.lex.pick(rng, labels, int(rng.integers(1, 3)))) for _ in range(n)]
    i, j = (1, 2) if n == 2 else tuple(sorted(int(x) + 1 for x in rng.choice(n, 2, replace=False)))
    # make clips i and j differ: clip j gets labels not in clip i
    rest = [l for l in labels if l not in per[i - 1]]
    per[j - 1] = list(ctx.lex.pick(rng, rest, int(rng.integers(1, 3))))
    counts = [{l: int(rng.integers(1, 3)) for l in p} for p in per]
    clips = [scene_from_counts(ctx, rng, c) for c in counts]
    a, b = clip_ref(rng, i), clip_ref(rng, j)
    q = choose(rng, EVENT_Q).format(a=a, b=b)
    ans = choose(rng, [
        "{A} contains {x}, while {b} contains {y}.",
        "In {a} you hear {x}; {b} instead has {y}.",
        "{A} features {x}, whereas {b} features {y}.",
    ]).format(A=a[0].upper() + a[1:], a=a, b=b, x=describe_counts(counts[i - 1]), y=describe_counts(counts[j - 1]))
    kws = sorted(set(per[i - 1]) | set(per[j - 1]))
    return Draft(clips, q, ans, {"type": "caption", "value": ans, "keywords": kws}, [i, j],
                 extra={"variant": "events", "compared": [i, j]})


def _tempo(ctx, rng, n):
    grid = list(range(60, 185, 25))  # 60, 85, ..., 185 -> >= 25 BPM apart
    tempos = [int(t + rng.integers(-3, 4)) for t in ctx.lex.pick(rng, grid, n)]
    fastest = bool(rng.random() < 0.5)
    target = max(tempos) if fastest else min(tempos)
    k = tempos.index(target) + 1
    pieces = [compose(rng, tempo=t) for t in tempos]
    clips = [ctx.music_clip(p) for p in pieces]
    x = "fastest" if fastest else "slowest"
    if n == 2:
        x = "faster" if fastest else "slower"
    q = choose(rng, TEMPO_Q).format(x=x, n=n)
    others = join_and([f"clip {i + 1} at about {t} BPM" for i, t in enumerate(tempos) if i + 1 != k])
    ans = f"Clip {k} has the {x} tempo, at about {target} beats per minute, compared with {others}."
    return Draft(clips, q, ans, {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "tempo", "tempos": tempos, "asked": x})


def _mode(ctx, rng, n):
    m = "minor" if rng.random() < 0.5 else "major"
    other = "major" if m == "minor" else "minor"
    k = int(rng.integers(1, n + 1))
    pieces = [compose(rng, mode=m if i + 1 == k else other) for i in range(n)]
    clips = [ctx.music_clip(p) for p in pieces]
    q = choose(rng, MODE_Q).format(m=m, n=n)
    ans = (f"Clip {k} is in a {m} key ({pieces[k - 1].key}); "
           f"the {'other clip is' if n == 2 else 'other clips are'} in {other} keys.")
    return Draft(clips, q, ans, {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "mode", "keys": [p.key for p in pieces]})


def _corpus_tempo(ctx, rng, n):
    """Music4All-style rows with a tempo: the fastest/slowest of n tracks whose tempos differ by >= 15 BPM."""
    rows = sorted(ctx.corpora.with_tempo(), key=lambda r: float(r.extra["tempo"]))
    order = [rows[int(i)] for i in rng.permutation(len(rows))]
    picks: list = []
    for r in order:
        if all(abs(float(r.extra["tempo"]) - float(p.extra["tempo"])) >= 15 for p in picks):
            picks.append(r)
        if len(picks) == n:
            break
    if len(picks) < n:
        raise ValueError("corpus has too few tracks with distinct tempos")
    tempos = [round(float(r.extra["tempo"])) for r in picks]
    fastest = bool(rng.random() < 0.5)
    k = tempos.index(max(tempos) if fastest else min(tempos)) + 1
    x = ("faster" if fastest else "slower") if n == 2 else ("fastest" if fastest else "slowest")
    clips = [ctx.corpora.clip(ctx, r) for r in picks]
    q = choose(rng, TEMPO_Q).format(x=x, n=n)
    ans = f"Clip {k} has the {x} tempo, at about {tempos[k - 1]} beats per minute."
    return Draft(clips, q, ans, {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "tempo", "tempos": tempos, "asked": x, "source": "corpus"})


@register("comparison")
def generate(ctx, rng, n):
    if ctx.corpora is not None and len(ctx.corpora.with_tempo()) >= n and rng.random() < ctx.cfg.corpus_fraction:
        return _corpus_tempo(ctx, rng, n)
    v = rng.choice(["events", "tempo", "mode"], p=[0.5, 0.3, 0.2])
    return {"events": _events, "tempo": _tempo, "mode": _mode}[str(v)](ctx, rng, n)
