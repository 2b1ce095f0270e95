"""Held-out metrics of one policy's greedy answers: what the reward ablations compare.

Definitions (one completion per held-out item; "named" = the clips the completion refers to,
:func:`rewards.cliprefs.clips_referenced` over its visible text — the clips the parsimony reward reads):

accuracy              mean rule-verified correctness with the exact rule (for a set of clips: exactly the key's set;
                      ``reward.clip_set_credit`` is a training choice and never applies here).
irrelevant_clip_rate  share of completions that name at least one clip outside the item's ``relevant_clips``
                      (every clip is relevant when the item lists none). None without items.
paraphrase_agreement  over all unordered pairs of items in the same paraphrase family (datagen's ``metadata.family``;
                      otherwise the consistency reward's family: identical clips in order and the same key), the share
                      whose parsed answers (the verifier's ``info["parsed"]``) are equal; an unreadable answer agrees
                      with nothing. None when no item has a paraphrase.
paraphrase_kappa      paraphrase_agreement corrected for the agreement a policy gets by answering by rote:
                      (p_o − p_e) / (1 − p_e), p_o = paraphrase_agreement, p_e = the mean over the same pairs of
                      sum_a P(a)², P = the share of each parsed answer among all items with the pair's number of clips
                      (unreadable answers count in the total, never as an answer). 1: agreement beyond what the
                      answer mix explains; 0: no more than two answers drawn from it; None when p_e is 1 (every
                      answer the same) or there are no pairs. A policy naming every clip whatever it is asked has
                      p_o = 1 and no kappa; the consistency reward is meant to raise agreement of the other kind.
format_rate           share of completions that pass every check of the format reward (score 1.0).
mean_length           mean completion length in tokens.

The functions on plain lists are pure (table-tested); :func:`score_answers` reads them off samples and completions.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any, Sequence

from polyaudio_rl.core.schema import Sample

METRICS = ("accuracy", "irrelevant_clip_rate", "paraphrase_agreement", "paraphrase_kappa", "format_rate",
           "mean_length")


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def irrelevant_clip_rate(named: Sequence[set[int]], relevant: Sequence[set[int]]) -> float | None:
    """Share of items whose named clips include one outside their relevant set."""
    if len(named) != len(relevant):
        raise ValueError(f"irrelevant_clip_rate: {len(named)} answers but {len(relevant)} relevant sets")
    return _mean([float(bool(set(u) - set(r))) for u, r in zip(named, relevant)])


def paraphrase_pairs(families: Sequence[str | None]) -> list[tuple[int, int]]:
    """All unordered index pairs (i < j) whose family is the same (None: a family of its own)."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        if f is not None:
            by[f].append(i)
    return sorted(p for members in by.values() for p in combinations(members, 2))


def paraphrase_agreement(parsed: Sequence[Any], families: Sequence[str | None]) -> float | None:
    """Share of paraphrase pairs whose parsed answers are equal (None never agrees)."""
    if len(parsed) != len(families):
        raise ValueError(f"paraphrase_agreement: {len(parsed)} answers but {len(families)} families")
    pairs = paraphrase_pairs(families)
    return _mean([float(parsed[i] is not None and parsed[i] == parsed[j]) for i, j in pairs])


def paraphrase_kappa(parsed: Sequence[Any], families: Sequence[str | None], strata: Sequence[Any]) -> float | None:
    """Chance-corrected paraphrase agreement (module docstring); ``strata``: each item's number of clips."""
    if not len(parsed) == len(families) == len(strata):
        raise ValueError(f"paraphrase_kappa: {len(parsed)} answers, {len(families)} families, {len(strata)} strata")
    pairs = paraphrase_pairs(families)
    if not pairs:
        return None
    mix: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[Any, int] = defaultdict(int)
    for a, st in zip(parsed, strata):
        total[st] += 1
        if a is not None:
            mix[st][repr(a)] += 1
    expect = {st: sum((c / total[st]) ** 2 for c in mix[st].values()) for st in total}
    p_o = paraphrase_agreement(parsed, families) or 0.0
    p_e = sum(expect[strata[i]] for i, _ in pairs) / len(pairs)
    return None if p_e >= 1.0 - 1e-12 else (p_o - p_e) / (1.0 - p_e)


def format_rate(format_scores: Sequence[float]) -> float | None:
    """Share of completions whose format reward is 1.0 (every check passed)."""
    return _mean([float(s >= 1.0 - 1e-9) for s in format_scores])


def mean_length(lengths: Sequence[int]) -> float | None:
    return _mean([float(n) for n in lengths])


def chance_level(samples: Sequence[Sample]) -> float | None:
    """Expected accuracy of a uniform guess over each item's answer space, averaged over the items that have one
    (``metadata.answer_space`` from datagen, else the clip indices / choices / yes-no); None when no item has one."""
    per = []
    for s in samples:
        space, kind = (s.metadata or {}).get("answer_space"), s.key.get("type")
        if space:
            per.append(1.0 / len(space))
        elif kind == "clip":
            per.append(1.0 / len(s.clips))
        elif kind == "option" and s.choices:
            per.append(1.0 / len(s.choices))
        elif kind == "yesno":
            per.append(0.5)
    return _mean(per)


def family_of(sample: Sample) -> str:
    """The paraphrase family of a sample: datagen's ``metadata.family``, else identical clips + the same key."""
    from rewards.consistency import clip_fingerprint, key_signature

    fam = (sample.metadata or {}).get("family")
    return str(fam) if fam else clip_fingerprint(sample) + "|" + key_signature(sample.key)


def score_answers(samples: Sequence[Sample], texts: Sequence[str], lengths: Sequence[int],
                  answer_tag: bool = False) -> dict[str, Any]:
    """The metrics of the module docstring (and accuracy per task) for one completion per sample; ``scores``: each
    sample's rule score, in order (the run page's per-item answers)."""
    from rewards.cliprefs import clips_referenced
    from rewards.extract import extract_answer
    from rewards.format import format_reward
    from rewards.verifiers import verify

    if not len(samples) == len(texts) == len(lengths):
        raise ValueError(f"score_answers: {len(samples)} samples, {len(texts)} texts, {len(lengths)} lengths")
    correct, parsed, fmt = [], [], []
    per_task: dict[str, list[float]] = defaultdict(list)
    for s, t in zip(samples, texts):
        res = verify(s, t, answer_tag=answer_tag)  # no reward config: the exact rule
        correct.append(float(res.score or 0.0))
        per_task[s.task].append(correct[-1])
        parsed.append(res.info.get("parsed"))
        fmt.append(float(format_reward(s, t, answer_tag=answer_tag).score or 0.0))
    named = [clips_referenced(extract_answer(t).visible, len(s.clips)) for s, t in zip(samples, texts)]
    families = [family_of(s) for s in samples]
    relevant = [set(s.relevant_clips) or set(range(1, len(s.clips) + 1)) for s in samples]
    return {"accuracy": _mean(correct) or 0.0, "n": len(samples),
            "per_task": {k: float(sum(v) / len(v)) for k, v in sorted(per_task.items())},
            "irrelevant_clip_rate": irrelevant_clip_rate(named, relevant),
            "paraphrase_agreement": paraphrase_agreement(parsed, families),
            "paraphrase_kappa": paraphrase_kappa(parsed, families, [len(s.clips) for s in samples]),
            "format_rate": format_rate(fmt), "mean_length": mean_length(lengths), "scores": correct}
