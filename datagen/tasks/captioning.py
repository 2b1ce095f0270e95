"""Multi-audio Captioning, single and aggregated (Table 2)."""
from __future__ import annotations

from ..sources.music import compose
from ..text import content_words
from . import register
from .base import Draft, choose, count_phrase, filler, scene_from_counts

Q_ALL = [
    "Provide a brief summary of the events that occurred across all {n} audio clips.",
    "Describe what can be heard in each of the {n} clips, in order.",
    "Give an aggregated description of the {n} recordings.",
]
Q_ONE = [
    "Describe {c} in one sentence.",
    "Write a short caption for {c}.",
    "What can be heard in {c}?",
    "Caption {c} only.",
]


def _events_caption(meta) -> tuple[str, list[str]]:
    runs: list[list] = []
    for e in meta["events"]:
        if runs and runs[-1][0] == e["label"]:
            runs[-1][1] += 1
        else:
            runs.append([e["label"], 1])
    parts = [count_phrase(c, lab) for lab, c in runs]
    txt = parts[0] if len(parts) == 1 else ", then ".join(parts)
    return f"{txt}, over quiet {meta['background']}", sorted({e["label"] for e in meta["events"]})


def caption_of(meta) -> tuple[str, list[str]]:
    """A reference caption and its keywords, from a clip's metadata (what we put in the audio)."""
    kind = meta["kind"]
    if kind == "events":
        return _events_caption(meta)
    if kind == "music":
        return meta["description"], sorted(set(meta["instruments"]) | {meta["mode"]})
    if kind == "speech":
        who = "a woman" if meta["gender"] == "female" else "a man"
        kws = sorted(content_words(meta["transcript"]))[:3]
        return f"{who} speaking {meta['accent']} says: \"{meta['transcript']}\"", ["speech"] + kws
    if kind == "corpus":
        return meta["caption"], meta.get("keywords", [])
    raise ValueError(f"no caption for clip kind {kind!r}")


def _sentence(s: str) -> str:
    return s if s.endswith((".", '"', "!", "?")) else s + "."


def _clip(ctx, rng):
    if ctx.corpora is not None and ctx.corpora.has_captions() and rng.random() < ctx.cfg.corpus_fraction:
        return ctx.corpora.captioned_clip(ctx, rng)
    kind = str(rng.choice(["events", "events", "music", "speech"]))
    if kind == "events":
        labels = ctx.lex.pick(rng, ctx.events.labels(), int(rng.integers(1, 3)))
        return scene_from_counts(ctx, rng, {l: int(rng.integers(1, 3)) for l in labels})
    if kind == "music":
        return ctx.music_clip(compose(rng))
    return ctx.speech(ctx.pick_speakers(rng, 1)[0], [filler(ctx, rng)], rng)


@register("captioning")
def generate(ctx, rng, n):
    clips = [_clip(ctx, rng) for _ in range(n)]
    caps = [caption_of(c.meta) for c in clips]
    if rng.random() < 0.35:
        k = int(rng.integers(1, n + 1))
        q = choose(rng, Q_ONE).format(c=choose(rng, [f"clip {k}", f"the {['first', 'second', 'third', 'fourth', 'fifth'][k - 1]} clip"]))
        cap, kws = caps[k - 1]
        ans = _sentence(cap[0].upper() + cap[1:])
        return Draft(clips, q, ans, {"type": "caption", "value": ans, "keywords": kws}, [k],
                     extra={"variant": "single", "clip": k})
    q = choose(rng, Q_ALL).format(n=n)
    lines = [_sentence(f"Clip {i}: {c[0]}") for i, c in enumerate(caps, 1)]
    ans = " ".join(lines)
    kws = sorted({w for _, k in caps for w in k})
    return Draft(clips, q, ans, {"type": "caption", "value": ans, "keywords": kws}, list(range(1, n + 1)),
                 extra={"variant": "aggregated"})
