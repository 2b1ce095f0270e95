"""Format: does the completion follow the answer instruction? Fraction of these checks that pass:

non_empty       the answer region (:func:`rewards.extract.extract_answer`) is not empty;
answer_tag      only when the prompt asked for ``<answer>…</answer>`` (``data.answer_tag``): exactly one opening
                and one closing tag, forming one pair, and nothing but whitespace after the closing tag — a stray
                opening tag inside the pair (``<answer>Clip 2.<answer>Clip 3.</answer>``: two answers, the first
                one's closing tag written as an opening one) fails it;
one_answer      the answer has the shape the key asks for — one option letter, one clip (no hedge), at least one
                clip for a set of clips (no hedge), one of
                Yes/No/Not enough information, a full order of the asked clips, one count, a clip plus start and
                end times, at least one keyword, a value not offered as one of alternatives (a number when the
                value is one; at least one clip named when the key lists clips), a caption with content words;
length          the answer region has at most ``format_max_words`` words;
no_repetition   no word 4-gram occurs more than 3 times in the visible completion (degenerate loops).

So with the tag not asked for there are 4 checks (each worth 1/4), with it 5 (1/5).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from polyaudio_rl.core.schema import Sample

from .cliprefs import clips_referenced, is_hedged
from .extract import Extracted, extract_answer
from .registry import RewardResult, check_sample, register_reward
from .verifiers import (
    answer_clips,
    content_tokens,
    read_count,
    read_options,
    read_order,
    read_value,
    read_times,
    read_yesno,
)


def answer_shape(sample: Sample, ans: Extracted) -> tuple[bool, str]:
    """Whether the answer region has the shape ``sample.key`` asks for, and why not."""
    t, text, n = sample.key["type"], ans.text, len(sample.clips)
    if t == "option":
        k = len(read_options(text, sample.choices))
        return k == 1, f"{k} options chosen"
    if t == "clip":
        named, hedge = answer_clips(sample, text, {int(sample.key["value"])})
        return len(named) == 1 and not hedge, f"clips named {sorted(named)}{' (hedged)' if hedge else ''}"
    if t == "clips":
        named, hedge = answer_clips(sample, text, {int(v) for v in sample.key["value"]})
        return bool(named) and not hedge, f"clips named {sorted(named)}{' (hedged)' if hedge else ''}"
    if t == "yesno":
        k = len(read_yesno(text))
        return k == 1, f"{k} yes/no classes"
    if t == "permutation":
        order = read_order(text, n)
        ok = sorted(order) == sorted(int(v) for v in sample.key["value"]) and not is_hedged(text, n)
        return ok, f"order {order}"
    if t == "count":
        v, why = read_count(sample, text)
        return v is not None, why
    if t == "interval":
        named, hedge = answer_clips(sample, text, {int(sample.key["clip"])})
        k = len(read_times(text))
        return (len(named) <= 1 and not hedge and k >= 2), f"clips {sorted(named)}, {k} times"
    if t == "value":
        _, parsed, why = read_value(sample, text)
        if why.startswith(("hedged", "lists", "no number")) or not content_tokens(text):
            return False, why or "no content words"
        if sample.key.get("clips") and not clips_referenced(text, n):
            return False, "names no clip (the key asks which clips hold the value)"
        return True, ""
    return bool(content_tokens(text)), "no content words"


@register_reward("format")
def format_reward(sample: Sample, completion: str, **ctx: Any) -> RewardResult:
    """Fraction of the format checks (tag, one answer, length, no repetition) that pass."""
    check_sample(sample)
    cfg = ctx.get("cfg")
    answer_tag = bool(ctx.get("answer_tag", False))
    max_words = int(getattr(cfg, "format_max_words", ctx.get("format_max_words", 200)))
    ans = extract_answer(completion)
    checks: dict[str, bool] = {}
    why: dict[str, str] = {}
    checks["non_empty"] = bool(ans.text)
    if answer_tag:
        low = ans.visible.lower()
        after = low.rsplit("</answer>", 1)[-1] if ans.n_tags else ""
        opening = low.count("<answer>")
        checks["answer_tag"] = ans.n_tags == 1 and opening == 1 and not after.strip()
        if not checks["answer_tag"]:
            why["answer_tag"] = (f"{ans.n_tags} complete tags" + (f", {opening} opening tags" if opening > 1 else "")
                                 + (", text after </answer>" if after.strip() else ""))
    ok, reason = answer_shape(sample, ans) if ans.text else (False, "empty")
    checks["one_answer"] = ok
    if not ok:
        why["one_answer"] = reason
    checks["length"] = len(ans.text.split()) <= max_words
    words = ans.visible.lower().split()
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    top = max(grams.values()) if grams else 0
    checks["no_repetition"] = top <= 3
    if top > 3:
        why["no_repetition"] = f"a 4-gram occurs {top} times"
    failed = [k for k, v in checks.items() if not v]
    return RewardResult(sum(checks.values()) / len(checks), {"failed": failed, "why": why})
