"""Rule-based correctness: one verifier per ground-truth key type, with per-task overrides.

:func:`verify` dispatches on the task first (``TASK_VERIFIERS``, e.g. factual_consistency asks for the value AND
the clips holding it), then on ``sample.key["type"]`` (``KEY_VERIFIERS``). Every verifier reads the answer region
(:func:`rewards.extract.extract_answer`) and returns a :class:`RewardResult` whose ``info["parsed"]`` is the
canonical answer it read (used by the consistency reward) or None when nothing could be read.

Claim and contrast: option, clip, interval and value answers are read from the *claim*, the text before the first
contrast marker ("compared with", "unlike", "whereas", "while", "by contrast", "but", "than", "differs from"):
"Clip 3 is the slowest, compared with clip 1 at 133 BPM" claims clip 3. A contrast part that offers alternatives
("…, but it could also be clip 4": or/maybe/could/also/too…) is a hedge → 0.

Scores (all in [0, 1]; garbage or empty answers score 0, never raise):

option       1 if exactly one option is chosen (letter "B", "(B)", "option B", or the text of one choice) and it
             is the key's letter; several different options (hedging, listing) → 0.
clip         1 if exactly one clip is named in the claim and it is the key's clip. Clips that the question itself
             names are ignored unless the key's clip is among them ("Clip 3 has the same speaker as clip 1" → 3).
             "Audio 1 or Audio 2", listing every clip, or naming a second clip in the claim → 0. A bare "3" or
             "third" → clip 3.
yesno        1 if the answer is the key's class (Yes / No / Not enough information). A leading "Yes"/"No"/"Not
             enough information" decides; otherwise exactly one class must be named ("cannot be determined",
             "insufficient information" count as Not enough information); both → 0.
permutation  1 if the clips are named in the key's order (clip mentions, else bare numbers "3, 1, 2").
             Otherwise, with ``permutation_partial``: max(0, (C − D) / P) with C/D the concordant/discordant pairs
             among the key's clips that the answer names and P = n(n−1)/2 all pairs (Kendall τ; missing clips
             earn nothing); a clip outside the key or a hedge → 0.
count        1 if |answer − key| <= key["tolerance"] (default 0). The count read is the number followed by
             "times"/"occurrences"/"in total" if any, else the first number (digits or words, "twice" = 2) after
             clip references and clip counts ("Audio 2", "all four clips") are masked. Two different numbers
             offered as alternatives ("3 or 4", "3-4", "4, maybe 5") → 0.
interval     IoU of [start, end] with the key's interval when the answer names the key's clip (or the question
             names only that clip) — 1 when both ends are within ``interval_tolerance_s`` of the key's (answers
             round times); wrong/several clips or fewer than two times → 0. Times: "1.25 s", "1250 ms",
             "0:01.25", "from 1.2 to 3.5 seconds".
keywords     F1 between the answer's content words and the key's keywords (phrases count as one; plurals
             stemmed; stop words and meta words like "keyword", "common", "clips" dropped): listing many words
             lowers precision.
value        1 if the normalised answer contains the value or an alias (numbers in words or digits, case,
             punctuation, articles ignored) and does not offer it as one of alternatives ("42 or 45"; for
             numbers, also a list of three or more different numbers) → else 0.
clips        (a set of clips, "which clips contain a beep?") exact by default: 1 if the clips named in the claim are
             exactly the key's set (no hedge), else 0. With ``clip_set_credit="recall"`` (a lenient judge that does
             not check parsimony) the score is the share of the key's clips that are named, whatever else is named:
             naming every clip earns 1 — the clip-parsimony reward is what penalises the extra clips.
caption      recall of the key's keywords in the answer (the category keyword "speech" is also found as
             "says", "speaking", "voice"…: CAPTION_EQUIVALENTS), scaled by min(1, caption_max_ratio · |ref| / |answer|)
             words so that keyword stuffing does not pay; without keywords, content-word F1 with the reference.

Task overrides:
factual_consistency  (value key with ``clips``): mean of the value score and the F1 between the clips named in
                     the claim and ``key["clips"]`` ("47, stated in clips 1 and 2; by contrast, clip 3 says 50"
                     → 1); value only when the key has no clips.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from polyaudio_rl.core.registry import Registry
from polyaudio_rl.core.schema import Sample

from .cliprefs import clip_sequence, clip_spans, clips_referenced, is_hedged
from .extract import (
    ORDINALS,
    Extracted,
    contains_phrase,
    extract_answer,
    find_numbers,
    mask_spans,
    normalize,
    stem,
    tokens,
)
from .registry import RewardError, RewardResult, check_sample, register_reward

Verifier = Callable[..., RewardResult]
KEY_VERIFIERS: Registry[Verifier] = Registry("key-type verifier")
TASK_VERIFIERS: Registry[Verifier] = Registry("task verifier")


def register_key_verifier(key_type: str) -> Callable[[Verifier], Verifier]:
    return KEY_VERIFIERS.register(key_type)


def register_task_verifier(task: str) -> Callable[[Verifier], Verifier]:
    return TASK_VERIFIERS.register(task)


def _opt(ctx: dict[str, Any], name: str, default: Any) -> Any:
    cfg = ctx.get("cfg")
    return getattr(cfg, name, default) if cfg is not None else ctx.get(name, default)


@register_reward("correctness")
def verify(sample: Sample, completion: str, **ctx: Any) -> RewardResult:
    """Rule-verified correctness of ``completion`` against ``sample.key`` (task override, else key type)."""
    check_sample(sample)
    fn = TASK_VERIFIERS.get(sample.task) or KEY_VERIFIERS.get(sample.key["type"])
    if fn is None:
        raise RewardError(f"sample {sample.id} (task {sample.task}): no verifier for key type {sample.key['type']!r}")
    ans = extract_answer(completion)
    try:
        res = fn(sample, ans, **ctx)
    except (KeyError, TypeError, ValueError) as exc:  # a malformed key, not a malformed answer
        raise RewardError(f"sample {sample.id} (task {sample.task}): bad key {sample.key!r}: {exc}") from exc
    res.info.setdefault("source", ans.source)
    res.info["key_type"] = sample.key["type"]
    return res


def _result(score: float, parsed: Any, reason: str = "") -> RewardResult:
    info: dict[str, Any] = {"parsed": parsed}
    if reason:
        info["reason"] = reason
    return RewardResult(float(score), info)


# ---------------------------------------------------------------------------------------------- claim / contrast
_CONTRAST = re.compile(
    r"(?:[,;:]\s*|\s+)(?:compared\s+(?:with|to)|in\s+comparison\s+(?:with|to)|unlike|whereas|while|whilst|"
    r"by\s+contrast|in\s+contrast|rather\s+than|as\s+opposed\s+to|but|however|differs?\s+from|"
    r"different\s+from|other\s+than|than)\b",
    re.I,
)
_REST_HEDGE = re.compile(
    r"\b(?:or|maybe|perhaps|possibly|might|could|either|also|too|as\s+well|alternatively|not\s+sure)\b", re.I
)


def split_claim(text: str) -> tuple[str, str]:
    """(claim, contrast): the text before the first contrast marker ("compared with", "unlike", "whereas",
    "while", "by contrast", "but", "than", "differs from", …) and the rest. Without a marker, (text, "")."""
    m = _CONTRAST.search(text)
    if m and text[:m.start()].strip():
        return text[:m.start()], text[m.start():]
    return text, ""


def rest_hedges(rest: str) -> bool:
    """Whether the contrast part offers alternatives ("…, but it could also be clip 3")."""
    return bool(_REST_HEDGE.search(rest))


# ---------------------------------------------------------------------------------------------- option
_LETTER_KEYWORD = re.compile(r"\b(?:option|choice|answer(?:\s+is)?|letter)\s*[:(]?\s*\(?([A-Za-z])\)?(?![\w'])", re.I)
_LETTER_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_MARK = re.compile(r"(?:^|\s)([A-Z])[).:](?=\s|$)")
_LETTER_ALONE = re.compile(r"^\W*([A-Za-z])\W*$")


def read_options(text: str, choices: list[str]) -> set[str]:
    """Option letters chosen in ``text`` (by letter or by the text of a choice)."""
    n = len(choices)
    valid = {chr(ord("A") + i) for i in range(n)}
    letters: set[str] = set()
    m = _LETTER_ALONE.match(text)
    if m:
        letters.add(m.group(1).upper())
    for m in _LETTER_KEYWORD.finditer(text):
        if m.group(1).islower() and re.match(r"\s+\w", text[m.end():]):
            continue  # "the answer is a dog": an article, not option A
        letters.add(m.group(1).upper())
    for rx in (_LETTER_PAREN, _LETTER_MARK):
        for m in rx.finditer(text):
            if m.group(1) in valid:
                letters.add(m.group(1))
    # the text of a choice; a choice contained in a longer matched choice does not count twice
    toks = tokens(text)
    matched = [i for i, c in enumerate(choices) if tokens(c) and contains_phrase(toks, tokens(c)) >= 0]
    for i in matched:
        ti = tokens(choices[i])
        if not any(j != i and len(tokens(choices[j])) > len(ti) and contains_phrase(tokens(choices[j]), ti) >= 0
                   for j in matched):
            letters.add(chr(ord("A") + i))
    return letters


@register_key_verifier("option")
def verify_option(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = str(sample.key["value"]).strip().upper()
    claim, rest = split_claim(ans.text)
    letters = read_options(claim, sample.choices)
    if rest_hedges(rest) and read_options(rest, sample.choices) - letters:
        return _result(0, None, "hedged between options")
    if not letters:
        return _result(0, None, "no option")
    if len(letters) > 1:
        return _result(0, None, f"several options {sorted(letters)}")
    (got,) = letters
    return _result(got == gold, got)


# ---------------------------------------------------------------------------------------------- clip
def answer_clips(sample: Sample, text: str, gold: set[int]) -> tuple[set[int], bool]:
    """Clips named in the claim of ``text`` (see :func:`split_claim`), minus the clips the question names unless a
    gold clip is among them; and whether the answer hedges between clips."""
    n = len(sample.clips)
    full = text
    text, rest = split_claim(full)
    named = clips_referenced(text, n)
    if not named:
        stripped = re.sub(r"^(?:the\s+)", "", text.strip().strip(".!").strip().lower())
        if stripped.isdigit():
            named = {int(stripped)}
        elif stripped in ORDINALS:
            named = {ORDINALS[stripped]}
        elif stripped in ("last", "final"):
            named = {n}
    in_question = clips_referenced(sample.question, n)
    if in_question and not (gold & in_question):
        named = named - in_question
    hedge = is_hedged(full, n) or (rest_hedges(rest) and bool(clips_referenced(rest, n) - named))
    return named, hedge


@register_key_verifier("clip")
def verify_clip(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = int(sample.key["value"])
    named, hedge = answer_clips(sample, ans.text, {gold})
    if hedge:
        return _result(0, None, "hedged between clips")
    if not named:
        return _result(0, None, "no clip named")
    if len(named) > 1:
        return _result(0, None, f"several clips {sorted(named)}")
    (got,) = named
    return _result(got == gold, got)


@register_key_verifier("clips")
def verify_clip_set(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = {int(v) for v in sample.key["value"]}
    named, hedge = answer_clips(sample, ans.text, gold)
    if hedge:
        return _result(0, None, "hedged between clips")
    if not named:
        return _result(0, None, "no clip named")
    parsed = sorted(named)
    if _opt(ctx, "clip_set_credit", "exact") == "recall":
        return _result(len(named & gold) / len(gold), parsed, "" if named == gold else "recall of the key's clips")
    return _result(named == gold, parsed, "" if named == gold else "not the key's set")


# ---------------------------------------------------------------------------------------------- yes / no
_NEI = re.compile(
    r"\b(?:not\s+enough\s+info(?:rmation)?|insufficient\s+(?:info(?:rmation)?|evidence)|cannot\s+be\s+determined|"
    r"can(?:no|')t\s+(?:be\s+)?(?:determine|determined|tell|say)|impossible\s+to\s+(?:tell|determine|say)|"
    r"not\s+possible\s+to\s+(?:tell|determine|say)|unclear|undetermined|neither\s+supported\s+nor\s+contradicted)\b",
    re.I,
)
_YES = re.compile(r"\byes\b", re.I)
_NO = re.compile(r"\bno\b", re.I)


def read_yesno(text: str) -> set[str]:
    t = text.strip()
    lead = re.match(r"^\W*(yes|no|not\s+enough\s+information)\b", t, re.I)
    if lead:
        w = lead.group(1).lower()
        if w.startswith("not"):
            return {"Not enough information"}
        if not (w == "no" and _NEI.match(t.lstrip(" *\"'"))):
            return {"Yes" if w == "yes" else "No"}
    found = set()
    if _NEI.search(t):
        found.add("Not enough information")
        t = _NEI.sub(" ", t)
    if _YES.search(t):
        found.add("Yes")
    if _NO.search(t):
        found.add("No")
    return found


@register_key_verifier("yesno")
def verify_yesno(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    found = read_yesno(ans.text)
    if not found:
        return _result(0, None, "no yes/no/not-enough-information")
    if len(found) > 1:
        return _result(0, None, f"several classes {sorted(found)}")
    (got,) = found
    return _result(got == sample.key["value"], got)


# ---------------------------------------------------------------------------------------------- permutation
def read_order(text: str, n_clips: int) -> list[int]:
    seq = clip_sequence(text, n_clips)
    if seq:
        return seq
    out: list[int] = []
    for num in find_numbers(text):
        v = num.value
        if v.is_integer() and int(v) not in out:
            out.append(int(v))
    return out


def kendall_partial(pred: list[int], gold: list[int]) -> float:
    """(C − D) / P over the gold pairs; pairs with a clip missing from ``pred`` count as neither."""
    pos = {c: i for i, c in enumerate(pred)}
    n = len(gold)
    pairs = n * (n - 1) // 2
    if pairs == 0:
        return 1.0 if pred == gold else 0.0
    c = d = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = gold[i], gold[j]
            if a in pos and b in pos:
                if pos[a] < pos[b]:
                    c += 1
                else:
                    d += 1
    return (c - d) / pairs


@register_key_verifier("permutation")
def verify_permutation(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = [int(v) for v in sample.key["value"]]
    n = len(sample.clips)
    if is_hedged(ans.text, n):
        return _result(0, None, "hedged between clips")
    pred = read_order(ans.text, n)
    if not pred:
        return _result(0, None, "no order")
    if pred == gold:
        return _result(1, pred)
    extra = [c for c in pred if c not in gold]
    if extra:
        return _result(0, pred, f"clips outside the key {extra}")
    if not _opt(ctx, "permutation_partial", True):
        return _result(0, pred, "not exact")
    tau = kendall_partial(pred, gold)
    return _result(max(0.0, tau), pred, f"partial: tau over all pairs = {tau:.3f}")


# ---------------------------------------------------------------------------------------------- count
_COUNT_WORDS = re.compile(r"^\s*(?:times?|occurrences?|instances?|in\s+total|total|altogether|in\s+all)\b", re.I)
_OR_BETWEEN = re.compile(r"^\s*(?:,?\s*or|/|to|-|–)\s*$", re.I)
_HEDGE_WORD = re.compile(r"\b(?:or|maybe|perhaps|possibly|probably|either|might|could)\b", re.I)


def numbers_hedged(masked: str, nums: list) -> bool:
    """Two different numbers offered as alternatives: "3 or 4", "3-4", "3/4", "3 times, or maybe 4"."""
    for a, b in zip(nums, nums[1:]):
        if a.value == b.value:
            continue
        between = masked[a.end:b.start]
        if _OR_BETWEEN.match(between) or _HEDGE_WORD.search(between):
            return True
    return False


def _answer_numbers(sample: Sample, text: str) -> tuple[str, list]:
    """The text with clip references masked, and the numbers left in it."""
    masked = mask_spans(text, clip_spans(text, len(sample.clips)))
    return masked, find_numbers(masked)


def read_count(sample: Sample, text: str) -> tuple[float | None, str]:
    masked, nums = _answer_numbers(sample, text)
    nums = [x for x in nums if x.value >= 0]
    if not nums:
        if re.search(r"\b(?:none|never|not\s+(?:once|at\s+all)|no\s+(?:times?|occurrences?))\b", masked, re.I):
            return 0.0, ""  # "it never occurs"
        return None, "no number"
    if numbers_hedged(masked, nums):
        return None, "hedged between numbers"
    counted = [x for x in nums if _COUNT_WORDS.match(masked[x.end:])]
    pick = counted[0] if counted else nums[0]
    return pick.value, ""


@register_key_verifier("count")
def verify_count(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = float(sample.key["value"])
    tol = float(sample.key.get("tolerance", 0) or 0)
    got, reason = read_count(sample, ans.text)
    if got is None:
        return _result(0, None, reason)
    return _result(abs(got - gold) <= tol + 1e-9, got)


# ---------------------------------------------------------------------------------------------- interval
_MMSS = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2}(?:\.\d+)?)(?![\d:])")
_UNIT = re.compile(r"^\s*(ms|milliseconds?|s|secs?|seconds?|min|mins|minutes?)\b", re.I)


def read_times(text: str) -> list[float]:
    """Times in seconds in order of appearance; a bare number takes the unit of the next number that has one."""
    items: list[tuple[int, float, str | None]] = []
    for m in _MMSS.finditer(text):
        items.append((m.start(), int(m.group(1)) * 60 + float(m.group(2)), "s"))
    masked = mask_spans(text, [(m.start(), m.end()) for m in _MMSS.finditer(text)])
    for num in find_numbers(masked):
        u = _UNIT.match(masked[num.end:])
        unit = None
        if u:
            w = u.group(1).lower()
            unit = "ms" if (w == "ms" or w.startswith("milli")) else "min" if w.startswith("min") else "s"
        items.append((num.start, num.value, unit))
    items.sort(key=lambda t: t[0])
    out: list[float] = []
    for k, (_, v, unit) in enumerate(items):
        if unit is None:
            unit = next((u for _, _, u in items[k + 1:] if u is not None), "s")
        out.append(v / 1000.0 if unit == "ms" else v * 60.0 if unit == "min" else v)
    return out


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


@register_key_verifier("interval")
def verify_interval(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    k = sample.key
    gold_clip, gold = int(k["clip"]), (float(k["start"]), float(k["end"]))
    n = len(sample.clips)
    named, hedge = answer_clips(sample, ans.text, {gold_clip})
    if hedge:
        return _result(0, None, "hedged between clips")
    if not named:
        in_q = clips_referenced(sample.question, n)
        named = in_q if in_q == {gold_clip} else set()
    masked = mask_spans(ans.text, clip_spans(ans.text, n))
    times = read_times(masked)
    parsed = [sorted(named)[0] if len(named) == 1 else None] + (sorted(times[:2]) if len(times) >= 2 else [])
    if len(named) != 1:
        return _result(0, None, "no clip named" if not named else f"several clips {sorted(named)}")
    if len(times) < 2:
        return _result(0, None, f"needs a start and an end time, read {times}")
    if named != {gold_clip}:
        return _result(0, parsed, "wrong clip")
    start, end = sorted(times[:2])
    tol = float(_opt(ctx, "interval_tolerance_s", 0.05))
    if abs(start - gold[0]) <= tol + 1e-9 and abs(end - gold[1]) <= tol + 1e-9:
        return _result(1.0, parsed, "within tolerance")
    return _result(iou((start, end), gold), parsed, "")


# ---------------------------------------------------------------------------------------------- keywords
STOP_WORDS = set(
    """i me my we our you your he him his she her it its they them their what which who whom this that these those
    am is are was were be been being have has had do does did doing a an the and but if or because as until while of
    at by for with about against between into through during before after above below to from up down in out on off
    over under again further then once here there when where why how all any both each few more most other some
    such no nor not only own same so than too very s t can will just don should now also there's it's i'd i'm
    would could might must shall may""".split()
)
META_WORDS = {stem(w) for w in """keyword keywords word words common shared present appear appears appearing
    across clip clips audio audios recording recordings spoken mentioned every found phrase phrases term terms
    include includes including answer final list following""".split()}


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in STOP_WORDS and t not in META_WORDS]


def keyword_f1(text: str, gold: list[str]) -> tuple[float, list[str]]:
    toks = content_tokens(text)
    remaining = list(toks)
    tp = 0
    found = []
    for kw in gold:
        kt = [t for t in tokens(kw) if t not in STOP_WORDS] or tokens(kw)
        i = contains_phrase(remaining, kt)
        if i >= 0:
            tp += 1
            found.append(kw)
            del remaining[i:i + len(kt)]
    extra = len(remaining)
    if tp == 0:
        return 0.0, toks
    p, r = tp / (tp + extra), tp / len(gold)
    return 2 * p * r / (p + r), toks


@register_key_verifier("keywords")
def verify_keywords(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    gold = [str(v) for v in sample.key["value"]]
    if not gold:
        raise ValueError("keywords key has an empty value list")
    text = mask_spans(ans.text, clip_spans(ans.text, len(sample.clips)))
    f1, toks = keyword_f1(text, gold)
    parsed = sorted(set(toks)) or None
    return _result(f1, parsed, "" if f1 else "no keyword")


# ---------------------------------------------------------------------------------------------- value
def _is_number(s: str) -> float | None:
    nums = find_numbers(s)
    if len(nums) == 1 and normalize(s) == normalize(s[nums[0].start:nums[0].end]):
        return nums[0].value
    return None


def read_value(sample: Sample, text: str) -> tuple[float, Any, str]:
    """(score, parsed, reason) for a value key."""
    k = sample.key
    golds = [str(k["value"])] + [str(a) for a in k.get("aliases", []) or []]
    text, rest = split_claim(text)
    if rest_hedges(rest):
        return 0.0, None, "hedged between values"
    masked, nums = _answer_numbers(sample, text)
    gold_num = _is_number(golds[0])
    if gold_num is not None:
        if not nums:
            return 0.0, None, "no number"
        distinct = []
        for x in nums:
            if x.value not in distinct:
                distinct.append(x.value)
        hit = any(abs(v - gold_num) <= 1e-9 * max(1.0, abs(gold_num)) for v in distinct)
        if numbers_hedged(masked, nums):
            return 0.0, None, "hedged between values"
        if len(distinct) >= 3:
            return 0.0, None, f"lists {len(distinct)} different numbers"
        if hit:
            return 1.0, normalize(golds[0]), ""
        return 0.0, normalize(str(distinct[0])), "wrong value"
    toks = normalize(masked).split()
    for g in golds:
        gt = normalize(g).split()
        i = contains_phrase(toks, gt)
        if i >= 0:
            before, after = toks[max(0, i - 1):i], toks[i + len(gt):i + len(gt) + 1]
            if before == ["or"] or after == ["or"] or "either" in toks[max(0, i - 3):i]:
                return 0.0, None, "hedged between values"
            return 1.0, normalize(golds[0]), ""
    return 0.0, " ".join(toks[:16]) or None, "value not found"


@register_key_verifier("value")
def verify_value(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    score, parsed, reason = read_value(sample, ans.text)
    return _result(score, parsed, reason)


def set_f1(pred: set[int], gold: set[int]) -> float:
    tp = len(pred & gold)
    if tp == 0:
        return 0.0
    p, r = tp / len(pred), tp / len(gold)
    return 2 * p * r / (p + r)


@register_task_verifier("factual_consistency")
def verify_factual_consistency(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    """The value (e.g. the correct age) and which clips hold it: mean of the two when the key lists clips."""
    if sample.key["type"] != "value":
        return KEY_VERIFIERS[sample.key["type"]](sample, ans, **ctx)
    vscore, vparsed, reason = read_value(sample, ans.text)
    gold_clips = {int(c) for c in sample.key.get("clips", []) or []}
    if not gold_clips:
        return _result(vscore, vparsed, reason)
    claim, _ = split_claim(ans.text)
    named = clips_referenced(claim, len(sample.clips))
    cscore = 0.0 if is_hedged(ans.text, len(sample.clips)) else set_f1(named, gold_clips)
    res = _result(0.5 * vscore + 0.5 * cscore, [vparsed, sorted(named)] if vparsed is not None else None, reason)
    res.info.update(value_score=vscore, clips_score=round(cscore, 6))
    return res


# ---------------------------------------------------------------------------------------------- caption
# Category keywords that a caption expresses in other words: "a man says …" describes speech.
CAPTION_EQUIVALENTS = {"speech": ("speech", "speak", "say", "said", "talk", "voice", "spoken", "speaker")}


def caption_hit(answer_tokens: list[str], keyword: str) -> bool:
    kt = tokens(keyword)
    if contains_phrase(answer_tokens, kt) >= 0:
        return True
    alts = CAPTION_EQUIVALENTS.get(" ".join(normalize(keyword).split()), ())
    return any(stem(a) in answer_tokens for a in alts)


@register_key_verifier("caption")
def verify_caption(sample: Sample, ans: Extracted, **ctx: Any) -> RewardResult:
    ref = str(sample.key.get("value", ""))
    kws = [str(k) for k in sample.key.get("keywords", []) or []]
    toks = content_tokens(ans.text)
    if not toks:
        return _result(0, None, "empty caption")
    if kws:
        all_toks = tokens(ans.text)
        hits = [k for k in kws if caption_hit(all_toks, k)]
        score = len(hits) / len(kws)
    else:
        score, _ = keyword_f1(ans.text, sorted(set(content_tokens(ref))) or ["<none>"])
        hits = []
    ratio = _opt(ctx, "caption_max_ratio", 3.0)
    ref_words = max(1, len(normalize(ref).split()))
    ans_words = len(normalize(ans.text).split())
    scale = min(1.0, ratio * ref_words / ans_words) if ans_words else 0.0
    res = _result(score * scale, sorted(set(toks)))
    res.info.update(keyword_hits=hits, length_scale=round(scale, 6))
    return res
