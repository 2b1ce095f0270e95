"""Cross-clip Speaker Linking & Attribution (Table 2): link one voice across clips, and name it."""
from __future__ import annotations

from . import register
from .base import Draft, choose, fillers

Q_SAME = [
    "Are {a} and {b} spoken by the same person?",
    "Do {a} and {b} contain the voice of the same speaker?",
    "Is the speaker in {a} the same person as the speaker in {b}?",
]
Q_WHICH = [
    "Which other clip is spoken by the same person as clip {x}?",
    "The speaker of clip {x} appears in exactly one other clip. Which one?",
    "Find the clip whose speaker is the same person who speaks in clip {x}.",
    "Clip {x}'s voice is heard again in another clip. Which clip is it?",
]
Q_NAME = [
    "Audio clip {x} and audio clip {y} contain speech from the same person. Who is it?",
    "Clips {x} and {y} share a speaker. What is that speaker's name?",
    "The same person speaks in clip {x} and clip {y}. What is their name?",
]


def _corpus(ctx, rng, n):
    """Real speakers (LibriSpeech-style manifest: path, transcript, speaker): one speaker in exactly two clips."""
    pool = ctx.corpora.by_speaker()
    multi = sorted(s for s, rows in pool.items() if len(rows) >= 2)
    v = multi[int(rng.integers(len(multi)))]
    others = sorted(s for s in pool if s != v)
    if n == 2:
        same = bool(rng.random() < 0.5)
        a, b = (int(i) for i in rng.choice(len(pool[v]), 2, replace=False))
        rows = [pool[v][a], pool[v][b] if same else pool[others[int(rng.integers(len(others)))]][0]]
        clips = [ctx.corpora.clip(ctx, r) for r in rows]
        q = choose(rng, Q_SAME).format(a="clip 1", b="clip 2")
        ans = ("Yes, the same person speaks in both clips." if same else
               "No, clips 1 and 2 are spoken by two different people.")
        return Draft(clips, q, ans, {"type": "yesno", "value": "Yes" if same else "No"}, [1, 2],
                     extra={"variant": "same", "voices": [c.meta["speaker"] for c in clips], "source": "corpus"})
    x, y = sorted(int(i) + 1 for i in rng.choice(n, 2, replace=False))
    pair = [pool[v][int(i)] for i in rng.choice(len(pool[v]), 2, replace=False)]
    rows = []
    for i in range(1, n + 1):
        if i in (x, y):
            rows.append(pair[0] if i == x else pair[1])
        else:
            o = pool[others[int(rng.integers(len(others)))]]
            rows.append(o[int(rng.integers(len(o)))])
    clips = [ctx.corpora.clip(ctx, r) for r in rows]
    ask, other = (x, y) if rng.random() < 0.5 else (y, x)
    q = choose(rng, Q_WHICH).format(x=ask)
    ans = f"Clip {other} is spoken by the same person as clip {ask}."
    return Draft(clips, q, ans, {"type": "clip", "value": other}, sorted([ask, other]),
                 extra={"variant": "which", "voices": [c.meta["speaker"] for c in clips], "linked": [x, y],
                        "source": "corpus"})


def _corpus_ok(ctx, n) -> bool:
    if ctx.corpora is None:
        return False
    pool = ctx.corpora.by_speaker()
    return any(len(r) >= 2 for r in pool.values()) and len(pool) >= 2


@register("speaker_linking")
def generate(ctx, rng, n):
    if _corpus_ok(ctx, n) and rng.random() < ctx.cfg.corpus_fraction:
        return _corpus(ctx, rng, n)
    if len(ctx.speakers) < 2:
        raise ValueError("speaker_linking needs at least two speakers")
    v = ctx.pick_speakers(rng, 1)[0]
    others = [s for s in ctx.speakers if s.id != v.id]
    pick_other = lambda: others[int(rng.integers(len(others)))]  # noqa: E731
    if n == 2:
        same = bool(rng.random() < 0.5)
        voices = [v, v if same else pick_other()]
        clips = [ctx.speech(s, fillers(ctx, rng, 2), rng) for s in voices]
        q = choose(rng, Q_SAME).format(a="clip 1", b="clip 2")
        ans = ("Yes, the same person speaks in both clips." if same else
               "No, clips 1 and 2 are spoken by two different people.")
        return Draft(clips, q, ans, {"type": "yesno", "value": "Yes" if same else "No"}, [1, 2],
                     extra={"variant": "same", "voices": [s.id for s in voices]})
    x, y = sorted(int(i) + 1 for i in rng.choice(n, 2, replace=False))
    by_name = bool(rng.random() < 0.5)
    voices = [v if i in (x, y) else pick_other() for i in range(1, n + 1)]
    if by_name:
        # Everyone introduces themselves once; the linked person introduces themselves in clip x only.
        names = ctx.lex.pick(rng, ctx.lex.names, n)
        name_of = {}
        for i, s in enumerate(voices, 1):
            name_of.setdefault(s.id, names[i - 1])
        clips = []
        for i, s in enumerate(voices, 1):
            intro = i != y and (s.id != v.id or i == x)
            sents = ([f"Hi, this is {name_of[s.id]}."] if intro else []) + fillers(ctx, rng, 2)
            clips.append(ctx.speech(s, sents, rng, speaker_name=name_of[s.id]))
        who = name_of[v.id]
        q = choose(rng, Q_NAME).format(x=x, y=y)
        ans = choose(rng, ["It is {w}, who introduces themselves in clip {x} and speaks again in clip {y}.",
                           "That speaker is {w}: the voice that says 'this is {w}' in clip {x} returns in clip {y}."]
                     ).format(w=who, x=x, y=y)
        key = {"type": "value", "value": who, "aliases": [who.lower()], "clips": [x, y]}
        return Draft(clips, q, ans, key, [x, y], extra={"variant": "name", "voices": [s.id for s in voices],
                                                         "linked": [x, y]})
    clips = [ctx.speech(s, fillers(ctx, rng, 2), rng) for s in voices]
    ask, other = (x, y) if rng.random() < 0.5 else (y, x)
    q = choose(rng, Q_WHICH).format(x=ask)
    ans = choose(rng, ["Clip {o} is spoken by the same person as clip {a}.",
                       "The speaker of clip {a} is heard again in clip {o}."]).format(o=other, a=ask)
    return Draft(clips, q, ans, {"type": "clip", "value": other}, sorted([ask, other]),
                 extra={"variant": "which", "voices": [s.id for s in voices], "linked": [x, y]})
