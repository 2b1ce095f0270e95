"""Faults section: failures injected on purpose, to rehearse them (off by default).

Each fault fires once, at the start of its GRPO step (before that step's data is drawn), in the driver process; a
fault whose step was already passed (a resumed run, a step redone after a learner restart) does not fire again.
Used by the chaos test (``tests/polyaudio_rl/test_chaos.py``) and by anyone who wants to see a failure handled
before production meets it, e.g. ``faults.kill_learner_worker_at_step=3``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class FaultsConfig:
    """Step numbers are GRPO steps (1-based); 0 = off."""

    kill_rollout_actor_at_step: int = cfg_field(
        0, "Kill rollout actor 0 (ray.kill; Ray restarts it, the pool re-syncs it and re-sends its shard). 0: off.")
    kill_reward_actor_at_step: int = cfg_field(
        0, "Kill reward actor 0 (ray.kill, no restart; the reward pool replaces it and rescores its shard). 0: off.")
    kill_learner_worker_at_step: int = cfg_field(
        0, "Kill learner worker 0 (ray.kill, as a crashed process; the driver restarts the learner from the newest "
        "valid checkpoint and redoes the steps after it, up to learner.max_restarts). 0: off.")
    judge_outage_at_step: int = cfg_field(
        0, "Make the judge endpoint unreachable for judge_outage_s seconds from this step on (every reward actor's "
        "judge client connects to a closed local port: connection refused, retried like a real outage). 0: off.")
    judge_outage_s: float = cfg_field(
        30.0, "Length of the judge outage in seconds. Shorter than the judge client's retry budget "
        "(reward.judge.max_retries/backoff_s/max_backoff_s), it only delays scoring; longer, items go unscored.")
    sigterm_at_step: int = cfg_field(
        0, "Send SIGTERM to the driver process (as a preempted node or `ray job stop` would): the step finishes, a "
        "checkpoint is written, the --resume command is printed, exit 0. 0: off.")

    def validate(self) -> None:
        for name in ("kill_rollout_actor_at_step", "kill_reward_actor_at_step", "kill_learner_worker_at_step",
                     "judge_outage_at_step", "sigterm_at_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"faults.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.judge_outage_s <= 0:
            raise ValueError(f"faults.judge_outage_s must be > 0, got {self.judge_outage_s}")

    @property
    def any(self) -> bool:
        return any((self.kill_rollout_actor_at_step, self.kill_reward_actor_at_step,
                    self.kill_learner_worker_at_step, self.judge_outage_at_step, self.sigterm_at_step))
