"""Fault injection by configuration (the ``faults:`` section, off by default): rehearse failures in a real run.

    injector = FaultInjector(cfg.faults)
    for step in ...:
        injector.before_step(step, rollout=pool, rewards=reward_pool, learner=learner)
        driver.step(step)

Each fault fires once, at the start of its step, before the step draws its data; the run's own recovery paths then
handle it exactly as they would a real failure: Ray restarts a killed rollout actor and the pool re-syncs it and
re-sends its shard; the reward pool replaces a killed reward actor and rescores its shard; a killed learner worker
surfaces as :class:`~polyaudio_rl.core.deaths.WorkerDied` and the driver rebuilds from the newest valid checkpoint (as
it does for a process killed from outside at any moment: checkpoint, sync, prefetch, evaluation); a judge outage
(connections refused) runs the judge client's retries; SIGTERM is the preemption path (finish the step, checkpoint,
print ``--resume``, exit 0). A step passed already (resumed past it, or redone after a learner restart) does not
fire its fault again. ``fired`` lists what fired, with the step; the run's summary keeps it.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

from .core.config.faults import FaultsConfig


class FaultInjector:
    def __init__(self, cfg: FaultsConfig, start_step: int = 0):
        self.cfg = cfg
        self.fired: list[dict[str, Any]] = []
        self._done: set[str] = set()
        self._start = start_step  # a resumed run does not replay the faults of the steps it already ran

    def _due(self, name: str, at: int, step: int) -> bool:
        if not at or at != step or at <= self._start or name in self._done:
            return False
        self._done.add(name)
        self.fired.append({"fault": name, "step": step})
        print(f"[faults] step {step}: {name}", file=sys.stderr, flush=True)
        return True

    def before_step(self, step: int, rollout: Any, rewards: Any, learner: Any) -> None:
        import ray

        c = self.cfg
        if self._due("kill_rollout_actor", c.kill_rollout_actor_at_step, step):
            ray.kill(rollout.actors[0], no_restart=False)
        if self._due("kill_reward_actor", c.kill_reward_actor_at_step, step):
            ray.kill(rewards.actors[0], no_restart=True)
        if self._due("kill_learner_worker", c.kill_learner_worker_at_step, step):
            ray.kill(learner.workers[0], no_restart=True)
        if self._due(f"judge_outage_{c.judge_outage_s:g}s", c.judge_outage_at_step, step):
            rewards.judge_outage(c.judge_outage_s)
        if self._due("sigterm", c.sigterm_at_step, step):
            os.kill(os.getpid(), signal.SIGTERM)  # handled by preemption.StopRequest in the driver's main thread


__all__ = ["FaultInjector"]
