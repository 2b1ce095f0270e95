"""Common Keyword Extraction (Table 2, Figure 4): the keyword(s) spoken in every clip."""
from __future__ import annotations

from ..text import content_words
from . import register
from .base import Draft, choose, join_and

TEMPLATES = [
    "{name} kept thinking about {kw} all afternoon at the {place}.",
    "At the {place}, everyone was talking about {kw}.",
    "{name} wrote a short note about {kw} for the {place}.",
    "My friend {name} asked me about {kw} on the phone.",
    "We heard a funny story about {kw} near the {place}.",
    "{name} and I argued about {kw} on the way to the {place}.",
    "Nobody at the {place} expected {kw} to matter so much.",
    "{name} painted a picture of {kw} for the {place}.",
]
# Figure 4's question variants, plus Table 2's single-keyword form.
QUESTIONS = [
    "List the common keywords present in all audio clips (ignore stop words).",
    "What keywords appear across all clips? Exclude stop words.",
    "Identify the shared keywords across the audio clips (no stop words).",
    "Extract the common non-stopword keywords across the clips.",
    "Provide the common keywords across the clips (comma-separated).",
]
Q_SINGLE = "What is the single keyword spoken in all of the audio clips?"


@register("common_keyword")
def generate(ctx, rng, n):
    topic = ctx.lex.pick(rng, sorted(ctx.lex.topics))
    k = 1 if rng.random() < 0.5 else 2
    kws = list(ctx.lex.pick(rng, ctx.lex.topics[topic], k))
    kw_text = join_and([f"the {w}" for w in kws])
    tpl = ctx.lex.pick(rng, TEMPLATES, n)
    names = ctx.lex.pick(rng, ctx.lex.names, n)
    places = [p for p in ctx.lex.places if not (content_words(p) & set(kws))]
    places = ctx.lex.pick(rng, places, n)
    sentences = [t.format(name=names[i], place=places[i], kw=kw_text) for i, t in enumerate(tpl)]
    common = set.intersection(*(content_words(s) for s in sentences))
    if common != set(kws):
        raise ValueError(f"common words {sorted(common)} != keywords {kws}")
    speakers = ctx.pick_speakers(rng, n)
    clips = [ctx.speech(speakers[i], [s], rng) for i, s in enumerate(sentences)]
    q = Q_SINGLE if (k == 1 and rng.random() < 0.4) else choose(rng, QUESTIONS)
    ans = (f"The keyword common to all clips is '{kws[0]}'." if k == 1 else
           f"The common keywords are {join_and(kws)}.")
    return Draft(clips, q, ans, {"type": "keywords", "value": sorted(kws)}, list(range(1, n + 1)),
                 extra={"topic": topic})
