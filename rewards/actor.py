"""Ray reward actors: a pool that scores a batch of GRPO groups concurrently.

Each :class:`RewardActor` is an async Ray actor holding a :class:`rewards.scorer.RewardScorer` (and, when the
judge is on, one judge client with its cache and concurrency limit). :meth:`RewardPool.score_batch` ships the
groups — without their audio bytes, which no reward reads — in contiguous shards to the actors; each actor runs
the rule rewards in-process and all its judge calls concurrently (stage 1). The pool then computes the
batch-level consistency and the weighted totals in the caller (stage 2, cheap) and returns
:class:`rewards.scorer.BatchScores` with per-component scores and totals, in the order of the groups given.

A dead actor is replaced and its shard scored again (once) so no group is lost or scored twice.
"""
from __future__ import annotations

import logging
from typing import Any

import ray

from polyaudio_rl.core.config.reward import RewardConfig

from .scorer import BatchScores, Group, ItemScores, RewardScorer, finalize

log = logging.getLogger(__name__)


@ray.remote
class RewardActor:
    """Scores shards of groups (stage 1 of :mod:`rewards.scorer`)."""

    def __init__(self, cfg: RewardConfig, answer_tag: bool = False):
        self.scorer = RewardScorer(cfg, answer_tag)

    async def score_items(self, groups: list[Group]) -> list[ItemScores]:
        return await self.scorer.score_items(groups)

    def judge_stats(self) -> dict[str, Any]:
        return self.scorer.judge_stats()

    def judge_outage(self, seconds: float) -> None:
        """Fault injection: this actor's judge endpoint is unreachable for ``seconds`` (see JudgeClient)."""
        if self.scorer.judge is None:
            raise ValueError("judge_outage: this reward actor scores without a judge")
        self.scorer.judge.start_outage(seconds)

    def ping(self) -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}


def _merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                out[k] = out.get(k, 0) + v
    return out


class RewardPool:
    """``num_actors`` reward actors (default ``cfg.num_actors``) in the running Ray cluster."""

    def __init__(self, cfg: RewardConfig, answer_tag: bool = False, num_actors: int | None = None):
        cfg.validate()
        if not ray.is_initialized():
            raise RuntimeError("RewardPool needs a running Ray (ray.init() or a cluster address) first")
        self.cfg = cfg
        self.answer_tag = answer_tag
        self.num_actors = num_actors or cfg.num_actors
        self.actors = [self._spawn() for _ in range(self.num_actors)]
        self.replaced = 0  # actors that died and were replaced

    def _spawn(self) -> Any:
        return RewardActor.options(num_cpus=self.cfg.actor_num_cpus).remote(self.cfg, self.answer_tag)

    def score_batch(self, groups: list[Group]) -> BatchScores:
        """Per-component scores and weighted totals for every completion of every group (order kept)."""
        if not groups:
            return BatchScores([], dict(self.cfg.weights))
        light = [g.without_audio() for g in groups]
        k = min(len(self.actors), len(light))
        bounds = [round(i * len(light) / k) for i in range(k + 1)]
        shards = [light[bounds[i]:bounds[i + 1]] for i in range(k)]
        refs = [self.actors[i].score_items.remote(shards[i]) for i in range(k)]
        items: list[ItemScores] = []
        for i, ref in enumerate(refs):
            try:
                items.extend(ray.get(ref))
            except ray.exceptions.RayActorError:
                log.warning("reward actor %d died; replacing it and rescoring its %d groups", i, len(shards[i]))
                self.actors[i] = self._spawn()
                self.replaced += 1
                items.extend(ray.get(self.actors[i].score_items.remote(shards[i])))
        stats = _merge_stats(ray.get([a.judge_stats.remote() for a in self.actors]))
        return finalize(self.cfg, light, items, stats)

    def judge_outage(self, seconds: float) -> None:
        """Fault injection: every actor's judge endpoint is unreachable for ``seconds`` from now."""
        ray.get([a.judge_outage.remote(seconds) for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
