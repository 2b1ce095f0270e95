"""Answer extraction and text normalisation shared by the verifiers.

The answer region of a completion (:func:`extract_answer`):

1. ``<think>…</think>`` blocks are removed (an unclosed ``<think>`` swallows the rest: no answer).
2. If the completion holds ``<answer>``, every opening tag starts an answer, which ends at the next closing tag,
   the next opening tag (a closing tag written as an opening one) or the end of the text. The LAST answer ended by
   ``</answer>`` is the answer (``source="tag"``); with none, the last non-empty answer ended by an opening tag,
   else the text after the last opening tag (``source="open_tag"``; the text cut off by the token limit comes last).
   So ``<answer>Clip 2.<answer>Clip 3.<answer>Cl`` is three answers ("Clip 3." counts), not one naming clips 2 and
   3: repeating the answer tag cannot collect the union of several answers.
3. Otherwise the *final statement*: the last paragraph (blocks split by blank lines); if it contains an answer
   cue ("the answer is", "answer:", "final answer", "therefore", "thus", "so,"), only the text after the last cue
   (``source="final_statement"``).

Numbers are read in digits or words (``4``, ``four``, ``forty-two``, ``twice``); :func:`normalize` lower-cases,
turns number words into digits, drops punctuation and articles so that "Forty-two." and "42" compare equal.
Nothing here raises on garbage input: empty or unreadable text gives empty results.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>.*$", re.S | re.I)
_ANSWER_OPEN = re.compile(r"<answer>", re.I)
_ANSWER_CLOSE = re.compile(r"</answer>", re.I)
_SPECIAL_TOKENS = re.compile(r"<\|[^|>]{1,40}\|>")
_CUE = re.compile(
    r"(?:\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)|\bfinal answer\b|\btherefore\b|\bthus\b|\bhence\b|\bso,)\s*:?",
    re.I,
)
_LEADING_LABEL = re.compile(r"^\s*(?:final\s+)?answer\s*[:\-–]\s*", re.I)


@dataclass(frozen=True)
class Extracted:
    """The answer region of a completion and where it came from."""

    text: str  # the answer region, stripped
    source: str  # "tag" | "open_tag" | "final_statement" | "empty"
    n_tags: int  # number of answers closed by </answer> (complete <answer>…</answer> pairs)
    visible: str  # the completion without think blocks and special tokens (what a reader sees)


def strip_think(text: str) -> str:
    """Remove ``<think>…</think>`` blocks; an unclosed ``<think>`` removes everything after it."""
    text = _THINK_BLOCK.sub(" ", text)
    return _THINK_OPEN.sub(" ", text)


def clean(text: object) -> str:
    """A str with special tokens (``<|im_end|>``…) removed and unicode normalised; non-str gives ''."""
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFKC", text)
    return _SPECIAL_TOKENS.sub(" ", text)


def tag_answers(visible: str) -> list[tuple[str, str]] | None:
    """The answers of the tag convention in ``visible``, in order: (text, what ended it: "close" for ``</answer>``,
    "open" for the next opening tag, "end" for the end of the text); None when it has no opening tag."""
    parts = _ANSWER_OPEN.split(visible)
    if len(parts) == 1:
        return None
    out = []
    for k, part in enumerate(parts[1:], start=2):
        head = _ANSWER_CLOSE.split(part, maxsplit=1)
        out.append((head[0].strip(), "close" if len(head) == 2 else "open" if k < len(parts) else "end"))
    return out


def extract_answer(completion: object) -> Extracted:
    """The answer region of ``completion`` (see the module docstring for the rules)."""
    visible = strip_think(clean(completion)).strip()
    tagged = tag_answers(visible)
    if tagged is not None:
        closed = [a for a, end in tagged if end == "close"]
        if closed:
            return Extracted(closed[-1], "tag", len(closed), visible)
        ended = [a for a, end in tagged if end == "open" and a]
        return Extracted(ended[-1] if ended else tagged[-1][0], "open_tag", 0, visible)
    if not visible:
        return Extracted("", "empty", 0, visible)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", visible) if p.strip()]
    last = paragraphs[-1] if paragraphs else ""
    cues = list(_CUE.finditer(last))
    if cues and last[cues[-1].end():].strip():
        last = last[cues[-1].end():]
    last = _LEADING_LABEL.sub("", last).strip()
    return Extracted(last, "final_statement" if last else "empty", 0, visible)


# ---------------------------------------------------------------------------------------------- numbers
UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"hundred": 100, "thousand": 1000}
MULTIPLICATIVES = {"once": 1, "twice": 2, "thrice": 3}
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6, "7th": 7, "8th": 8,
    "9th": 9, "10th": 10,
}

_NUM_WORD = "|".join(sorted(list(UNITS) + list(TENS) + list(SCALES), key=len, reverse=True))
# A run of number words: "forty-two", "one hundred and five", "a hundred", "twenty one".
_WORD_NUMBER = re.compile(
    rf"\b(?:a\s+(?=hundred|thousand))?(?:{_NUM_WORD})(?:(?:\s+and\s+|[\s-]+)(?:{_NUM_WORD}))*\b", re.I
)
_DIGIT_NUMBER = re.compile(r"(?<![\w.])[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\w)")
_MULTIPLICATIVE = re.compile(r"\b(once|twice|thrice)\b", re.I)


def _word_kind(tok: str) -> str | None:
    if tok in UNITS:
        return "teen" if UNITS[tok] >= 10 else "unit"
    if tok in TENS:
        return "tens"
    return tok if tok in SCALES else None


# kinds that may follow each kind inside one number ("twenty one", "one hundred five", "two thousand ten")
_MAY_FOLLOW = {
    None: {"unit", "teen", "tens", "hundred", "thousand"},
    "unit": {"hundred", "thousand"},
    "teen": {"hundred", "thousand"},
    "tens": {"unit", "thousand"},
    "hundred": {"unit", "teen", "tens", "thousand"},
    "thousand": {"unit", "teen", "tens"},
}


def _word_segments(tokens: list[str]) -> list[tuple[int, int, int]]:
    """Split number-word tokens into numbers: [(value, first token, last token + 1)], greedily."""
    out, i = [], 0
    while i < len(tokens):
        total, current, prev, j = 0, 0, None, i
        while j < len(tokens):
            tok = tokens[j]
            kind = _word_kind(tok)
            if kind is None or kind not in _MAY_FOLLOW[prev]:
                break
            if kind in ("unit", "teen"):
                current += UNITS[tok]
            elif kind == "tens":
                current += TENS[tok]
            elif kind == "hundred":
                current = max(current, 1) * 100
            else:  # thousand
                total += max(current, 1) * 1000
                current = 0
            prev, j = kind, j + 1
        if j == i:  # not a number word at all
            i += 1
            continue
        out.append((total + current, i, j))
        i = j
    return out


def words_to_int(phrase: str) -> int | None:
    """``"forty-two"`` → 42, ``"one hundred and five"`` → 105, ``"a hundred"`` → 100; None unless the whole
    phrase is one number."""
    toks = [t for t in re.split(r"[\s-]+", phrase.lower().strip()) if t and t != "and"]
    if toks and toks[0] == "a":
        toks[0] = "one"
    segs = _word_segments(toks)
    return segs[0][0] if len(segs) == 1 and segs[0][1:] == (0, len(toks)) else None


@dataclass(frozen=True)
class Number:
    value: float
    start: int
    end: int


def find_numbers(text: str) -> list[Number]:
    """Every number in ``text`` (digits, words, once/twice/thrice) with its span, in order of appearance."""
    found: list[Number] = []
    for m in _DIGIT_NUMBER.finditer(text):
        try:
            found.append(Number(float(m.group(0).replace(",", "")), m.start(), m.end()))
        except ValueError:
            continue
    for m in _WORD_NUMBER.finditer(text):
        # token spans inside the run, so that "five six" gives two numbers
        spans = [(t.group(0).lower(), m.start() + t.start(), m.start() + t.end())
                 for t in re.finditer(r"[A-Za-z]+", m.group(0)) if t.group(0).lower() != "and"]
        toks = ["one" if (k == 0 and w == "a") else w for k, (w, _, _) in enumerate(spans)]
        for value, a, b in _word_segments(toks):
            found.append(Number(float(value), spans[a][1], spans[b - 1][2]))
    for m in _MULTIPLICATIVE.finditer(text):
        found.append(Number(float(MULTIPLICATIVES[m.group(1).lower()]), m.start(), m.end()))
    found.sort(key=lambda n: n.start)
    return found


def mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the characters of ``spans`` replaced by spaces (positions are kept)."""
    chars = list(text)
    for s, e in spans:
        for i in range(max(0, s), min(len(chars), e)):
            chars[i] = " "
    return "".join(chars)


# ---------------------------------------------------------------------------------------------- normalisation
ARTICLES = {"a", "an", "the"}


def _num_str(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def normalize(text: str) -> str:
    """Lower-case, number words → digits, punctuation and articles dropped, whitespace collapsed."""
    text = clean(text).lower()
    if not text:
        return ""
    out, last = [], 0
    for n in find_numbers(text):
        if n.start < last:
            continue
        out.append(text[last:n.start])
        out.append(f" {_num_str(n.value)} ")
        last = n.end
    out.append(text[last:])
    text = "".join(out)
    text = re.sub(r"(?<=\d)\.(?=\d)", "\u0000", text)  # keep decimal points
    text = re.sub(r"[^\w\s\u0000]|_", " ", text).replace("\u0000", ".")
    return " ".join(t for t in text.split() if t not in ARTICLES)


def stem(word: str) -> str:
    """A light, consistent stemmer (not a dictionary one): plurals (``barks``, ``boxes``, ``cities``), verb forms
    (``barking``, ``emptied``, ``emptying``) and ``-ion`` (``connection``) map to one stem; words of <= 3 letters
    and non-alphabetic tokens are kept as they are."""
    w = word
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("ches", "shes", "sses", "xes", "zes")) and len(w) > 4:
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix, repl in (("ied", "y"), ("ying", "y"), ("ing", ""), ("ed", ""), ("ion", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)] + repl
            if repl == "" and len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # running -> run, stopped -> stop
            break
    return w


def tokens(text: str) -> list[str]:
    """Normalised, stemmed tokens of ``text``."""
    return [stem(t) for t in normalize(text).split()]


def contains_phrase(haystack: list[str], needle: list[str]) -> int:
    """Index of the first occurrence of token list ``needle`` in ``haystack``, or -1."""
    if not needle:
        return -1
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i:i + n] == needle:
            return i
    return -1
