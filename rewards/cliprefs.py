"""Which clips a text refers to: "Audio 3", "the third clip", "clips 1 and 4", "first and last", "all clips".

Recognised forms (case-insensitive; indices are 1-based like everywhere in the schema):

- a clip noun then numbers: ``Audio 3``, ``audio clip #2``, ``clip two``, ``clips 1, 2 and 4``, ``clips 1-3``
  (ranges expand), ``recording number 2``;
- ordinals then a clip noun: ``the third clip``, ``the first and last clips``, ``second audio``, ``the 2nd one``,
  ``the second-to-last recording`` (``last`` = the number of clips);
- the whole set: ``all clips``, ``all three audios``, ``every clip``, ``each of the clips``, ``both clips``.

Clip nouns: audio(s), clip(s), audio clip(s), recording(s), track(s), segment(s), excerpt(s), audio file(s),
sample(s), "one(s)" after an ordinal. Indices outside 1..n are kept (they are wrong references, and verifiers
and the parsimony reward must see them). Two mentions joined only by "or"/"either"/"/" are flagged as a hedge.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .extract import ORDINALS, UNITS

_NOUN = r"(?:audio\s+(?:clips?|files?|recordings?|segments?|samples?|tracks?)|audios?|clips?|recordings?|tracks?|segments?|excerpts?|samples?)"
_NUMW = "|".join(sorted((w for w, v in UNITS.items() if 1 <= v <= 10), key=len, reverse=True))
# an index: digits not followed by a decimal part or a time unit, or a number word up to ten
_IDX = rf"(?:\d{{1,2}}(?![.,]\d)(?!\s*(?:s|sec|secs|seconds?|ms|min|minutes?|%|st|nd|rd|th)\b)|(?:{_NUMW})\b)"
_JOIN = r"(?:\s*,\s*and\s+|\s*,\s*or\s+|\s*,\s*|\s+and\s+|\s+or\s+|\s*&\s*|\s*/\s*|\s*(?:-|–|to|through)\s*)"
# a joined index must not start a new clause ("2 in clip 1, 3 in clip 2": the 3 is a count, not clip 3)
_NOT_CLAUSE = r"(?!\s+(?:in|at|on|of|from|for|per|times?|x|occurrences?|hits?|seconds?)\b)"
_NOUN_NUMS = re.compile(
    rf"\b{_NOUN}(?:\s+(?:no\.?|number))?[\s#_-]*({_IDX}(?:{_JOIN}#?\s*{_IDX}{_NOT_CLAUSE})*)", re.I
)
_ORD_WORDS = "|".join(sorted(list(ORDINALS) + ["last", "final", "second[- ]to[- ]last", "penultimate"],
                             key=len, reverse=True))
_ORD = rf"(?:{_ORD_WORDS})"
_ORD_LIST = re.compile(
    rf"\b((?:the\s+)?{_ORD}(?:(?:\s*,\s*and\s+|\s*,\s*or\s+|\s*,\s*|\s+and\s+|\s+or\s+|\s*&\s*)(?:the\s+)?{_ORD})*)"
    rf"\s+(?:{_NOUN}|ones?)\b(?![\s#_-]*(?:\d|(?:{_NUMW})\b))",  # not "first Audio 2" (that is Audio 2)
    re.I,
)
_ALL = re.compile(
    rf"\b(?:all(?:\s+of)?(?:\s+the)?(?:\s+(?:\d|{_NUMW}))?\s+{_NOUN}|every\s+{_NOUN}|each(?:\s+of\s+the)?\s+{_NOUN}"
    rf"|both(?:\s+of\s+the)?\s+{_NOUN}|all\s+of\s+them)\b",
    re.I,
)
# "N clips" (a count of clips, not a reference) — masked out before reading numbers from an answer
_CLIP_COUNT = re.compile(rf"\b(?:\d|{_NUMW})\s+(?:different\s+|separate\s+|distinct\s+)?{_NOUN}\b", re.I)
_HEDGE_BETWEEN = re.compile(r"^\s*(?:,?\s*or(?:\s+maybe|\s+possibly|\s+perhaps)?|/|,?\s*or\s+else)\s*(?:the\s+)?$", re.I)
_EITHER = re.compile(r"\beither\b", re.I)


@dataclass(frozen=True)
class ClipMention:
    indices: tuple[int, ...]  # in the order written
    start: int
    end: int
    text: str
    hedge: bool = False  # written as alternatives ("clip 1 or 2")


def _index(tok: str) -> int | None:
    tok = tok.strip().lower().lstrip("#").strip()
    if tok.isdigit():
        return int(tok)
    return UNITS.get(tok)


def _ordinal(tok: str, n_clips: int) -> int | None:
    tok = re.sub(r"^the\s+", "", tok.strip().lower())
    if tok in ("last", "final"):
        return n_clips
    if tok in ("penultimate",) or re.fullmatch(r"second[- ]to[- ]last", tok):
        return n_clips - 1
    return ORDINALS.get(tok)


def _expand_numbers(body: str) -> tuple[list[int], bool]:
    """Indices written in ``body`` ("1, 2 and 4", "1-3", "one or two") and whether "or" joined them."""
    parts = re.split(r"(\s*,\s*and\s+|\s*,\s*or\s+|\s*,\s*|\s+and\s+|\s+or\s+|\s*&\s*|\s*/\s*|\s*(?:-|–|to|through)\s*)",
                     body, flags=re.I)
    out: list[int] = []
    hedge = False
    pending_range = False
    for p in parts:
        sep = p.strip().lower()
        if sep in ("-", "–", "to", "through"):
            pending_range = True
            continue
        if sep in ("or", ", or", ",or", "/") or sep.endswith(" or") or sep.startswith("or"):
            hedge = True
            continue
        if sep in (",", "and", "&", ", and", ",and", ""):
            continue
        v = _index(p)
        if v is None:
            continue
        if pending_range and out and v > out[-1] and v - out[-1] <= 20:
            out.extend(range(out[-1] + 1, v + 1))
        else:
            out.append(v)
        pending_range = False
    return out, hedge


def find_clip_mentions(text: str, n_clips: int) -> list[ClipMention]:
    """Every clip reference in ``text`` in order of appearance (overlapping matches: the earliest, longest wins)."""
    if not isinstance(text, str) or not text:
        return []
    cands: list[ClipMention] = []
    for m in _ALL.finditer(text):
        cands.append(ClipMention(tuple(range(1, n_clips + 1)), m.start(), m.end(), m.group(0)))
    for m in _NOUN_NUMS.finditer(text):
        idx, hedge = _expand_numbers(m.group(1))
        if idx:
            cands.append(ClipMention(tuple(idx), m.start(), m.end(), m.group(0), hedge))
    for m in _ORD_LIST.finditer(text):
        body = m.group(1)
        toks = re.split(r"\s*,\s*and\s+|\s*,\s*or\s+|\s*,\s*|\s+and\s+|\s+or\s+|\s*&\s*", body, flags=re.I)
        idx = [v for v in (_ordinal(t, n_clips) for t in toks) if v is not None]
        if idx:
            hedge = bool(re.search(r"\bor\b", body, re.I))
            cands.append(ClipMention(tuple(idx), m.start(), m.end(), m.group(0), hedge))
    cands.sort(key=lambda c: (c.start, -(c.end - c.start)))
    out: list[ClipMention] = []
    for c in cands:
        if out and c.start < out[-1].end:
            continue
        out.append(c)
    # "Audio 1 or Audio 2", "either clip 1 or clip 2": alternatives across mentions
    marked: list[ClipMention] = []
    for i, c in enumerate(out):
        hedge = c.hedge
        if i > 0 and _HEDGE_BETWEEN.match(text[out[i - 1].end:c.start]):
            hedge = True
            if marked:
                p = marked[-1]
                marked[-1] = ClipMention(p.indices, p.start, p.end, p.text, True)
        if _EITHER.search(text[max(0, c.start - 12):c.start]):
            hedge = True
        marked.append(ClipMention(c.indices, c.start, c.end, c.text, hedge))
    return marked


def clips_referenced(text: str, n_clips: int) -> set[int]:
    """The set of clip indices ``text`` refers to (out-of-range ones included)."""
    return {i for m in find_clip_mentions(text, n_clips) for i in m.indices}


def clip_sequence(text: str, n_clips: int) -> list[int]:
    """Clip indices in the order first written ("Audio 3, then clip 1, then the second clip" → [3, 1, 2])."""
    seq: list[int] = []
    for m in find_clip_mentions(text, n_clips):
        for i in m.indices:
            if i not in seq:
                seq.append(i)
    return seq


def is_hedged(text: str, n_clips: int) -> bool:
    """Whether any clip reference in ``text`` is written as alternatives."""
    return any(m.hedge for m in find_clip_mentions(text, n_clips))


def clip_spans(text: str, n_clips: int) -> list[tuple[int, int]]:
    """Spans of clip references and of clip counts ("three clips"), to mask before reading other numbers."""
    spans = [(m.start, m.end) for m in find_clip_mentions(text, n_clips)]
    spans += [(m.start(), m.end()) for m in _CLIP_COUNT.finditer(text or "")]
    return spans
