"""Consistency: do answers to the same question agree — within a group and across paraphrases in the batch?

Definitions. For completion i, a_i is the canonical answer the rule verifier read from it
(``info["parsed"]`` of the correctness reward: an option letter, a clip index, Yes/No/…, an order, a count,
[clip, start, end], a keyword/content-word set, a normalised value); None when nothing could be read.

sim(a, b) ∈ [0, 1]:  0 if either is None; Jaccard of the sets for keywords/caption; token Jaccard for
                     value strings; for intervals IoU of the times when the clips agree (else 0); otherwise 1
                     when equal, 0 when not.

Family: two groups of a batch are *paraphrases* when they ask about the same clips (identical audio, in the same
order: :func:`clip_fingerprint`) and their ground-truth keys coincide (same type and value; aliases, tolerance
and keywords ignored) — whatever the question wording or task, their correct answers must agree.

    within_i = mean_{j in own group, j != i} sim(a_i, a_j)            (undefined when the group has one member)
    cross_i  = mean_{j in the other groups of i's family} sim(a_i, a_j)  (undefined without such groups)
    consistency_i = (1 − w) · within_i + w · cross_i   with w = ``consistency_cross_weight``,
                    the defined one alone when only one is defined, and 1.0 when neither is (a lone answer
                    is vacuously consistent; ``info["vacuous"]`` is set).

An unreadable answer (a_i None) scores 0. Note that agreement is rewarded whatever the answer's correctness —
the correctness reward is what pulls the consensus towards the truth.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from polyaudio_rl.core.schema import Sample

from .registry import RewardResult, register_reward
from .verifiers import iou, verify


def clip_fingerprint(sample: Sample) -> str:
    """A digest of the sample's clips in order (audio bytes; source id + duration when the bytes were stripped)."""
    h = hashlib.sha1()
    for c in sample.clips:
        if c.audio:
            h.update(hashlib.sha1(c.audio).digest())
        else:
            h.update(f"{c.source_id}|{c.duration:.6f}|{c.sample_rate}".encode())
        h.update(b"|")
    return h.hexdigest()


def key_signature(key: dict[str, Any]) -> str:
    """The part of a ground-truth key that decides what the correct answer is."""
    kept = {k: key[k] for k in ("type", "value", "clip", "start", "end", "clips") if k in key}
    if kept.get("type") == "caption":
        kept.pop("value", None)  # two captions of the same clips need not be the same text
        kept["keywords"] = sorted(key.get("keywords", []) or [])
    return json.dumps(kept, sort_keys=True, default=str)


def _jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def similarity(key_type: str, a: Any, b: Any) -> float:
    """sim(a, b) of the module docstring."""
    if a is None or b is None:
        return 0.0
    if key_type in ("keywords", "caption"):
        return _jaccard(set(a), set(b))
    if key_type == "interval":
        if len(a) == 3 and len(b) == 3:
            return iou((a[1], a[2]), (b[1], b[2])) if a[0] == b[0] else 0.0
        return 1.0 if a == b else 0.0
    if key_type == "value" and isinstance(a, str) and isinstance(b, str):
        return _jaccard(set(a.split()), set(b.split()))
    return 1.0 if a == b else 0.0


@dataclass
class GroupAnswers:
    """One group for the consistency reward: the sample and the canonical answers of its completions."""

    sample: Sample
    parsed: list[Any]
    fingerprint: str = ""
    family: str = field(default="", init=False)

    def __post_init__(self) -> None:
        fp = self.fingerprint or clip_fingerprint(self.sample)
        self.family = fp + "|" + key_signature(self.sample.key)


@register_reward("consistency", level="group")
def consistency(groups: list[GroupAnswers], **ctx: Any) -> list[list[RewardResult]]:
    """Per completion of each group: agreement within its group and with paraphrased questions in the batch."""
    cfg = ctx.get("cfg")
    w = float(getattr(cfg, "consistency_cross_weight", ctx.get("consistency_cross_weight", 0.5)))
    families: dict[str, list[int]] = {}
    for gi, g in enumerate(groups):
        families.setdefault(g.family, []).append(gi)
    out: list[list[RewardResult]] = []
    for gi, g in enumerate(groups):
        kt = g.sample.key["type"]
        others = [groups[o] for o in families[g.family] if o != gi]
        res = []
        for i, a in enumerate(g.parsed):
            if a is None:
                res.append(RewardResult(0.0, {"reason": "no readable answer"}))
                continue
            mates = [b for j, b in enumerate(g.parsed) if j != i]
            cross_answers = [b for o in others for b in o.parsed]
            within = sum(similarity(kt, a, b) for b in mates) / len(mates) if mates else None
            cross = sum(similarity(kt, a, b) for b in cross_answers) / len(cross_answers) if cross_answers else None
            info: dict[str, Any] = {"within": within, "cross": cross, "family_groups": len(others) + 1}
            if within is not None and cross is not None:
                score = (1 - w) * within + w * cross
            elif within is not None or cross is not None:
                score = within if within is not None else cross
            else:
                score, info["vacuous"] = 1.0, True
            res.append(RewardResult(score, info))
        out.append(res)
    return out


def group_consistency(sample: Sample, completions: list[str], **ctx: Any) -> list[RewardResult]:
    """Consistency of one group on its own (no batch): rule-parses the completions, then :func:`consistency`."""
    parsed = [verify(sample, c, **ctx).info.get("parsed") for c in completions]
    return consistency([GroupAnswers(sample, parsed)], **ctx)[0]
