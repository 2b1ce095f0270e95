"""Odd-one-out (Table 2): the clip that is semantically distinct from the others."""
from __future__ import annotations

from ..sources.music import INSTRUMENTS, compose
from . import register
from .base import Draft, choose, filler, scene_from_counts
from .starter import is_starter, odd_noise

QUESTIONS = [
    "Which of these {n} audio clips does not belong with the rest?",
    "One clip is different in kind from the others. Which one is it?",
    "Identify the odd one out among the {n} clips.",
    "Which clip stands out as thematically different from the other clips?",
    "All but one of these clips share a common theme. Which clip is the exception?",
]
KIND_DESC = {
    "speech": "a person speaking", "music": "a piece of music", "percussion": "percussion hits",
    "alert": "electronic alert and notification tones", "keyboard": "keyboard typing",
}
KIND_PLURAL = {
    "speech": "people speaking", "music": "pieces of music", "percussion": "percussion hits",
    "alert": "electronic alert tones", "keyboard": "keyboard typing",
}


def _kind_clip(ctx, rng, kind):
    if kind == "speech":
        return ctx.speech(ctx.pick_speakers(rng, 1)[0], [filler(ctx, rng)], rng)
    if kind == "music":
        return ctx.music_clip(compose(rng, drums=False))
    labels = ctx.events.labels(category=kind)
    if kind == "keyboard":
        return scene_from_counts(ctx, rng, {labels[0]: int(rng.integers(4, 9))}, min_gap=0.12)
    chosen = ctx.lex.pick(rng, labels, min(len(labels), int(rng.integers(1, 3))))
    return scene_from_counts(ctx, rng, {l: int(rng.integers(1, 3)) for l in chosen})


def _kinds(ctx, rng, n):
    kinds = ["speech", "music"] + [c for c in ("percussion", "alert", "keyboard") if ctx.events.labels(category=c)]
    common, odd = ctx.lex.pick(rng, kinds, 2)
    k = int(rng.integers(1, n + 1))
    clips = [_kind_clip(ctx, rng, odd if i == k else common) for i in range(1, n + 1)]
    q = choose(rng, QUESTIONS).format(n=n)
    q = _q2(rng, KIND_PLURAL[common]) if n == 2 else q
    ans = choose(rng, ["Clip {k} is the odd one out: it contains {o}, while the {rest} {c}.",
                       "Clip {k} does not belong, because it has {o} and the {rest} {c}."]).format(
        k=k, o=KIND_DESC[odd], c=KIND_PLURAL[common], rest="other clip has" if n == 2 else "others contain")
    return Draft(clips, q, ans, {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "kind", "common": common, "odd": odd})


def _family(ctx, rng, n):
    fams = sorted({f for _, _, f in INSTRUMENTS})
    common, odd = ctx.lex.pick(rng, fams, 2)
    k = int(rng.integers(1, n + 1))
    pool = {f: [nm for _, nm, ff in INSTRUMENTS if ff == f] for f in fams}
    pieces = [compose(rng, lead=ctx.lex.pick(rng, pool[odd if i == k else common]), accompaniment=False, drums=False)
              for i in range(1, n + 1)]
    clips = [ctx.music_clip(p) for p in pieces]
    q = _q2(rng, f"{common} instruments") if n == 2 else choose(rng, QUESTIONS).format(n=n)
    ans = (f"Clip {k} is the odd one out: it is played on a {odd} instrument ({pieces[k - 1].lead}), "
           f"while the others are played on {common} instruments.")
    return Draft(clips, q, ans, {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "instrument_family", "common": common, "odd": odd})


def _q2(rng, theme):
    """Two clips: the shared theme is named in the question, since one clip alone cannot define it."""
    return choose(rng, [f"These clips were meant to contain only {theme}, but one does not. Which clip does not belong?",
                        f"One of the two clips does not fit the theme of {theme}. Which one?"])




@register("odd_one_out")
def generate(ctx, rng, n):
    variant = getattr(ctx.cfg, "odd_one_out_variant", "mixed")
    if variant == "signal" or is_starter(ctx.cfg):
        return odd_noise(ctx, rng, n)  # the starter curriculum's variant (tasks/starter.py)
    if variant in ("kind", "family"):
        return (_kinds if variant == "kind" else _family)(ctx, rng, n)
    return (_kinds if rng.random() < 0.6 else _family)(ctx, rng, n)
