"""Clip-parsimony: does the answer rely only on the clips the question needs? (paper §2.4, §3.2.2)

Definition. U = the set of clips the completion refers to (:func:`rewards.cliprefs.clips_referenced`: "Audio 3",
"the third clip", "clips 1 and 4", "first and last", "all clips" = every clip; read from the whole visible
completion, reasoning included, or only the answer region with ``parsimony_scope="answer"``); R =
``sample.relevant_clips`` (when empty, every clip counts as relevant — noted in ``info``). Indices outside
1..n are irrelevant by definition. Then::

    parsimony = |U ∩ R| / |U|      (1.0 when U is empty: the answer leans on no clip it should not)

Listing every clip is not a free pass: with R = {2} out of 4 clips, "Audio 1, 2, 3 and 4" scores 1/4.
"""
from __future__ import annotations

from typing import Any

from polyaudio_rl.core.schema import Sample

from .cliprefs import clips_referenced
from .extract import extract_answer
from .registry import RewardResult, check_sample, register_reward


@register_reward("parsimony")
def parsimony(sample: Sample, completion: str, **ctx: Any) -> RewardResult:
    """Share of the clips the completion refers to that are relevant to the question."""
    check_sample(sample)
    n = len(sample.clips)
    cfg = ctx.get("cfg")
    scope = getattr(cfg, "parsimony_scope", ctx.get("parsimony_scope", "completion"))
    ans = extract_answer(completion)
    text = ans.text if scope == "answer" else ans.visible
    used = clips_referenced(text, n)
    relevant = set(int(i) for i in sample.relevant_clips) or set(range(1, n + 1))
    info: dict[str, Any] = {"used": sorted(used), "relevant": sorted(relevant)}
    if not sample.relevant_clips:
        info["note"] = "sample has no relevant_clips: every clip counts as relevant"
    if not used:
        info["reason"] = "no clip named"
        return RewardResult(1.0, info)
    irrelevant = used - relevant
    info["irrelevant"] = sorted(irrelevant)
    return RewardResult(len(used & relevant) / len(used), info)
