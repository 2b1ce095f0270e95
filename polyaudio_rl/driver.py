"""The GRPO loop: Ray Data → rollout actors → reward actors → learner workers → weight sync, repeated.

One :meth:`GRPODriver.step`:

1. **data**     take ``grpo.prompts_per_step`` prompts from the :class:`~polyaudio_rl.data_stream.PromptStream`;
2. **generate** the rollout pool samples G = ``grpo.group_size`` completions per prompt (token ids, log-probs,
   policy version — checked equal to the learner's current version);
3. **reward**   the reward pool scores every completion (per component and weighted total); unscored completions
   (a judge that is down) are dropped with their group and counted — never trained on a made-up reward — and the
   run stops when their fraction exceeds ``reward.max_unscored_fraction``;
4. **train**    the learner computes group advantages (``grpo.advantage``), drops zero-spread groups when
   ``grpo.dynamic_sampling``, and runs μ = ``grpo.inner_epochs`` clipped-surrogate updates;
5. **sync**     the new weights go to every rollout actor as policy version v+1, each verified against the
   learner's own log-probs of a fixed probe (a sync that did not take effect raises).

Metrics per step (README "Metrics") go to ``RUN_DIR/metrics.jsonl`` and wandb.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .core.config import Config
from .data_stream import PromptItem, PromptStream
from .core.grpo_loss import TrainItem


class LearnerFailure(RuntimeError):
    """A learner worker died during a step; the run restarts the learner from its last checkpoint."""


def _learner_call(fn, *args):
    import ray

    try:
        return fn(*args)
    except ray.exceptions.RayActorError as exc:
        raise LearnerFailure(f"a learner worker died: {str(exc).splitlines()[0]}") from exc


@dataclass
class StepResult:
    step: int
    metrics: dict[str, Any]
    sample_ids: list[str] = field(default_factory=list)


def reward_metrics(batch_scores: Any, weights: dict[str, float]) -> dict[str, float]:
    """Mean of each reward component, the total, and rule correctness per task, over scored completions."""
    out: dict[str, float] = {}
    comps: dict[str, list[float]] = defaultdict(list)
    per_task: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    for g in batch_scores.groups:
        for k, vals in g.components.items():
            comps[k].extend(v for v in vals if v is not None)
        totals.extend(t for t in g.total if t is not None)
        per_task[g.task].extend(v for v in g.components.get("correctness", []) if v is not None)
    for k, vals in comps.items():
        if vals:
            out[f"reward/{k}"] = float(np.mean(vals))
    if totals:
        out["reward/total"] = float(np.mean(totals))
    for task, vals in per_task.items():
        if vals:
            out[f"correctness/{task}"] = float(np.mean(vals))
    out["reward/unscored"] = float(batch_scores.n_unscored)
    return out


TOP_LEVEL_LEARNER_METRICS = ("loss", "kl", "clip_frac", "entropy", "grad_norm")


def learner_metric_name(key: str) -> str:
    """The metrics.jsonl name of a learner statistic: the headline ones stay top-level (``loss``, ``kl``, ...),
    names that already have a section (``x/y``) are kept, the rest go under ``learner/``."""
    if "/" in key or key in TOP_LEVEL_LEARNER_METRICS:
        return key
    return f"learner/{key}"


class GRPODriver:
    """Owns the stream, the rollout and reward pools and the learner for one GRPO run."""

    def __init__(self, cfg: Config, stream: PromptStream, rollout_pool: Any, reward_pool: Any, learner: Any,
                 processor: Any, version: int = 0):
        from actors.weight_sync import make_probe

        self.cfg = cfg
        self.stream = stream
        self.rollout = rollout_pool
        self.rewards = reward_pool
        self.learner = learner
        self.processor = processor
        self.version = version
        self.probe = make_probe(processor, cfg.rollout.probe_tokens)
        self.trained_by_step: dict[int, list[str]] = {}  # sample ids whose update is in the current weights

    @property
    def trained_ids(self) -> list[str]:
        """Every sample id trained on, in order (to prove none is lost or counted twice)."""
        return [sid for step in sorted(self.trained_by_step) for sid in self.trained_by_step[step]]

    def restore(self, learner: Any, stream: PromptStream, step: int) -> None:
        """Continue with a learner restored at ``step`` and a stream at its data position: updates of later steps
        were lost with the dead learner, so their samples will be trained on again (and counted once)."""
        self.learner, self.stream = learner, stream
        self.trained_by_step = {s: ids for s, ids in self.trained_by_step.items() if s <= step}

    # ------------------------------------------------------------------------------------------------ sync
    def expected_probe(self) -> list[float]:
        """The learner's log-probs of the probe completion: what every rollout actor must reproduce."""
        item = TrainItem(self.probe.prompt, list(self.probe.completion_ids))
        return list(_learner_call(self.learner.completion_logprobs, [item])[0])

    def sync(self) -> dict[str, float]:
        t = time.time()
        weights = _learner_call(self.learner.get_weights, self.cfg.rollout.sync_mode)
        expected = self.expected_probe()
        results = self.rollout.sync(weights, self.version + 1, expected)
        self.version += 1
        diffs = [getattr(r, "max_abs_diff", 0.0) for r in results]
        return {"time/sync": time.time() - t, "sync/max_abs_diff": float(max(diffs) if diffs else 0.0),
                "policy_version": float(self.version)}

    # ------------------------------------------------------------------------------------------------ step
    def step(self, step: int) -> StepResult:
        from rewards.scorer import Group

        g = self.cfg.grpo
        m: dict[str, Any] = {"phase": "grpo"}
        t0 = time.time()
        items: list[PromptItem] = self.stream.take(g.prompts_per_step)
        t1 = time.time()
        gids = [f"{step}:{it.position}:{it.sample.id}" for it in items]
        groups = self.rollout.generate([it.prompt for it in items], gids, g.group_size)
        t2 = time.time()
        for grp in groups:
            if grp.policy_version != self.version:
                raise RuntimeError(f"group {grp.group_id} came from policy version {grp.policy_version}, "
                                   f"the learner is at {self.version}")
        texts = [[c.text for c in grp.completions] for grp in groups]
        scores = self.rewards.score_batch([Group(it.sample, tx) for it, tx in zip(items, texts)])
        scores.check(self.cfg.reward.max_unscored_fraction)
        t3 = time.time()
        train_items, rewards, lengths = [], [], []
        dropped_groups = 0
        for it, grp, gs in zip(items, groups, scores.groups):
            if any(t is None for t in gs.total):
                dropped_groups += 1  # a partly unscored group has no trustworthy baseline
                continue
            for c, r in zip(grp.completions, gs.total):
                train_items.append(TrainItem(it.prompt, list(c.token_ids), old_logprobs=list(c.logprobs),
                                             group_id=grp.group_id))
                rewards.append(float(r))
                lengths.append(len(c.token_ids))
        m.update(reward_metrics(scores, self.cfg.reward.weights))
        m["groups/dropped_unscored"] = float(dropped_groups)
        scored = [gs.total for gs in scores.groups if not any(t is None for t in gs.total)]
        m["groups/zero_spread_frac"] = (sum(max(t) - min(t) <= self.cfg.grpo.zero_spread_tol for t in scored)
                                        / len(scored)) if scored else 0.0
        if train_items:
            lm = _learner_call(self.learner.train_grpo_step, train_items, rewards)
            m.update({learner_metric_name(k): v for k, v in lm.items()})
            self.trained_by_step[step] = [it.sample.id for it, gs in zip(items, scores.groups)
                                          if not any(t is None for t in gs.total)]
        t4 = time.time()
        m.update(self.sync())
        t5 = time.time()
        n_samples = sum(len(grp.completions) for grp in groups)
        m.update({
            "time/data": t1 - t0, "time/generate": t2 - t1, "time/reward": t3 - t2, "time/train": t4 - t3,
            "time/sync": t5 - t4, "time/step": t5 - t0, "samples_per_s": n_samples / max(t5 - t0, 1e-9),
            "response_length": float(np.mean(lengths)) if lengths else 0.0,
            "data/position": float(self.stream.position), "data/bad_rows": float(len(self.stream.bad)),
        })
        return StepResult(step, m, [it.sample.id for it in items])


def evaluate(rollout_pool: Any, prompts: Sequence[Any], answer_tag: bool = False) -> dict[str, Any]:
    """Greedy answers of the current policy on held-out prompts, rule-verified: accuracy overall and per task."""
    from rewards.verifiers import verify

    groups = rollout_pool.generate(list(prompts), [f"eval:{p.sample_id}" for p in prompts], 1, greedy=True)
    per_task: dict[str, list[float]] = defaultdict(list)
    for p, grp in zip(prompts, groups):
        res = verify(p.sample, grp.completions[0].text, answer_tag=answer_tag)
        per_task[p.sample.task].append(float(res.score or 0.0))
    allv = [v for vs in per_task.values() for v in vs]
    return {"accuracy": float(np.mean(allv)) if allv else 0.0, "n": len(allv),
            "per_task": {t: float(np.mean(v)) for t, v in sorted(per_task.items())}}
