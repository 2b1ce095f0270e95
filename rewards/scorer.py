"""Weight the reward components into one total per completion, for a batch of GRPO groups.

A *group* is one sample (prompt) with its G completions. Scoring a batch has two stages so that it can be spread
over reward actors (:mod:`rewards.actor`) while consistency still sees the whole batch:

1. :meth:`RewardScorer.score_items` — per completion: rule correctness (always computed and logged as
   ``correctness_rule``), the judge (``correctness_judge``, only when ``correctness_mode`` is judge/both and the
   correctness weight is > 0; the judge calls of the whole shard run concurrently), parsimony and format.
2. :func:`finalize` — consistency over the whole batch (:mod:`rewards.consistency`), then per completion::

       correctness = correctness_rule | correctness_judge | mean of both      (by correctness_mode)
       total       = sum_k weights[k] * component_k     over the components with weight > 0

   A completion whose enabled component is None (the judge could not score it) gets ``total=None`` and is
   counted as unscored — never a made-up 0. :meth:`BatchScores.check` raises :class:`TooManyUnscored` when the
   unscored fraction exceeds ``max_unscored_fraction``.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from polyaudio_rl.core.schema import Clip, Sample
from polyaudio_rl.core.config.reward import REWARD_COMPONENTS, RewardConfig

from .consistency import GroupAnswers, clip_fingerprint
from .extract import extract_answer
from .judge import JudgeClient
from .registry import check_sample, get_reward

# The item-level components every completion gets, through the reward registry; rule correctness is logged as
# ``correctness_rule`` (``correctness`` is rule, judge or both, by ``reward.correctness_mode``).
ITEM_REWARDS = ("correctness", "parsimony", "format")
ITEM_KEYS = {"correctness": "correctness_rule"}


class TooManyUnscored(RuntimeError):
    """More of a batch could not be scored than ``reward.max_unscored_fraction`` allows."""


@dataclass
class Group:
    """One prompt's sample and its completions. ``fingerprint`` identifies the clips (see consistency)."""

    sample: Sample
    completions: list[str]
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = clip_fingerprint(self.sample)

    def without_audio(self) -> "Group":
        """A copy whose clips carry no audio bytes (rewards never read audio; cheaper to ship to actors)."""
        clips = [Clip(b"", c.sample_rate, c.duration, c.source_id, c.licence) for c in self.sample.clips]
        return Group(dataclasses.replace(self.sample, clips=clips), list(self.completions), self.fingerprint)


@dataclass
class ItemScores:
    """Stage-1 scores of one group: per component name, one value per completion (None = unscored)."""

    sample_id: str
    task: str
    components: dict[str, list[float | None]]
    parsed: list[Any]
    info: list[dict[str, Any]]


@dataclass
class GroupScores:
    sample_id: str
    task: str
    components: dict[str, list[float | None]]  # correctness, parsimony, consistency, format, correctness_rule, …
    total: list[float | None]
    info: list[dict[str, Any]]


@dataclass
class BatchScores:
    groups: list[GroupScores]
    weights: dict[str, float]
    judge_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return sum(len(g.total) for g in self.groups)

    @property
    def n_unscored(self) -> int:
        return sum(t is None for g in self.groups for t in g.total)

    @property
    def unscored_fraction(self) -> float:
        return self.n_unscored / self.n_items if self.n_items else 0.0

    def component_means(self) -> dict[str, float]:
        """Mean of each component and of the total over the scored values of the batch."""
        sums: dict[str, list[float]] = {}
        for g in self.groups:
            for name, vals in list(g.components.items()) + [("total", g.total)]:
                sums.setdefault(name, []).extend(v for v in vals if v is not None)
        return {k: sum(v) / len(v) for k, v in sums.items() if v}

    def per_task_means(self, component: str = "correctness") -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for g in self.groups:
            vals = g.total if component == "total" else g.components.get(component, [])
            by.setdefault(g.task, []).extend(v for v in vals if v is not None)
        return {t: sum(v) / len(v) for t, v in sorted(by.items()) if v}

    def check(self, max_unscored_fraction: float) -> None:
        if self.unscored_fraction > max_unscored_fraction:
            reasons = sorted({i.get("unscored", "") for g in self.groups for i in g.info if i.get("unscored")})
            raise TooManyUnscored(
                f"{self.n_unscored}/{self.n_items} completions unscored ({self.unscored_fraction:.0%} > "
                f"{max_unscored_fraction:.0%}); reasons: {'; '.join(reasons)[:500]}"
            )


class RewardScorer:
    """Scores groups in-process. ``answer_tag``: whether the prompt asked for ``<answer>…</answer>``."""

    def __init__(self, cfg: RewardConfig, answer_tag: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.answer_tag = answer_tag
        self.use_judge = cfg.correctness_mode in ("judge", "both") and cfg.weights.get("correctness", 0) > 0
        self.judge = JudgeClient(cfg.judge) if self.use_judge else None

    # -- stage 1 -------------------------------------------------------------------------------------------
    async def score_items(self, groups: list[Group]) -> list[ItemScores]:
        ctx = {"cfg": self.cfg, "answer_tag": self.answer_tag}
        out: list[ItemScores] = []
        judge_jobs = []
        for g in groups:
            check_sample(g.sample)
            comps: dict[str, list[float | None]] = {ITEM_KEYS.get(n, n): [] for n in ITEM_REWARDS}
            infos: list[dict[str, Any]] = []
            parsed = []
            for c in g.completions:
                results = {ITEM_KEYS.get(n, n): get_reward(n).fn(g.sample, c, **ctx) for n in ITEM_REWARDS}
                for key, res in results.items():
                    comps[key].append(res.score)
                parsed.append(results["correctness_rule"].info.get("parsed"))
                infos.append({key: res.info for key, res in results.items()})
                if self.judge is not None:
                    judge_jobs.append(self.judge.score(
                        question=g.sample.question, reference=g.sample.answer,
                        answer=extract_answer(c).visible, n_clips=len(g.sample.clips),
                        relevant_clips=g.sample.relevant_clips,
                    ))
            out.append(ItemScores(g.sample.id, g.sample.task, comps, parsed, infos))
        if self.judge is not None:
            results = iter(await asyncio.gather(*judge_jobs))
            for item in out:
                item.components["correctness_judge"] = []
                for info in item.info:
                    r = next(results)
                    item.components["correctness_judge"].append(r.normalized)
                    info["correctness_judge"] = {"score_1_5": r.score, "per_prompt": r.per_prompt,
                                                 **({"error": r.error} if r.error else {})}
        return out

    def judge_stats(self) -> dict[str, Any]:
        return self.judge.stats.as_dict() if self.judge is not None else {}

    # -- both stages in this process -------------------------------------------------------------------------
    async def score_batch_async(self, groups: list[Group]) -> BatchScores:
        items = await self.score_items(groups)
        return finalize(self.cfg, groups, items, self.judge_stats())

    def score_batch(self, groups: list[Group]) -> BatchScores:
        async def run() -> BatchScores:
            try:
                return await self.score_batch_async(groups)
            finally:
                if self.judge is not None:
                    await self.judge.aclose()

        return asyncio.run(run())


def _correctness(mode: str, rule: float | None, judge: float | None) -> float | None:
    if mode == "rule":
        return rule
    if mode == "judge":
        return judge
    return None if rule is None or judge is None else 0.5 * (rule + judge)


def finalize(cfg: RewardConfig, groups: list[Group], items: list[ItemScores],
             judge_stats: dict[str, Any] | None = None) -> BatchScores:
    """Stage 2: consistency over the whole batch, the correctness mode, and the weighted totals."""
    if len(groups) != len(items):
        raise ValueError(f"finalize: {len(groups)} groups but {len(items)} item scores")
    ctx = {"cfg": cfg}
    cons = get_reward("consistency").fn(
        [GroupAnswers(g.sample, it.parsed, g.fingerprint) for g, it in zip(groups, items)], **ctx)
    mode = cfg.correctness_mode if cfg.weights.get("correctness", 0) > 0 else "rule"
    enabled = [k for k in REWARD_COMPONENTS if cfg.weights.get(k, 0) > 0]
    out = []
    for g, it, cres in zip(groups, items, cons):
        if it.sample_id != g.sample.id:
            raise ValueError(f"finalize: item scores for {it.sample_id} do not match group {g.sample.id}")
        comps = {k: list(v) for k, v in it.components.items()}
        judge_vals = comps.get("correctness_judge", [None] * len(g.completions))
        comps["correctness"] = [_correctness(mode, r, j) for r, j in zip(comps["correctness_rule"], judge_vals)]
        comps["consistency"] = [r.score for r in cres]
        totals: list[float | None] = []
        infos = []
        for i in range(len(g.completions)):
            info = dict(it.info[i])
            info["consistency"] = cres[i].info
            missing = [k for k in enabled if comps[k][i] is None]
            if missing:
                totals.append(None)
                why = info.get("correctness_judge", {}).get("error", "")
                info["unscored"] = f"{', '.join(missing)} unscored" + (f": {why}" if why else "")
            else:
                totals.append(sum(cfg.weights[k] * comps[k][i] for k in enabled))
            infos.append(info)
        out.append(GroupScores(g.sample.id, g.sample.task, comps, totals, infos))
    return BatchScores(out, {k: cfg.weights[k] for k in REWARD_COMPONENTS}, judge_stats or {})
