"""A rollout actor killed hard (SIGKILL, as the OOM killer or a node failure would) leaves no engine process behind."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import ray

from actors.rollout import RolloutPool
from tests.actors.rollout_fixtures import small_cfg

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_sigkilled_rollout_actor_leaves_no_engine_process(tiny_ckpt):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    # the engine core as vLLM's own child process, so there is something that could outlive the actor
    cfg = small_cfg(**{"rollout.num_actors": 1, "rollout.engine_in_process": "false", "rollout.max_restarts": 0})
    pool = RolloutPool(cfg, model_path=tiny_ckpt)
    try:
        actor_pid = pool.stats()[0]["pid"]
        children = psutil.Process(actor_pid).children(recursive=True)
        assert any("EngineCore" in " ".join(c.cmdline() + [c.name()]) for c in children), \
            [c.name() for c in children]  # the engine really runs in a child process
        os.kill(actor_pid, signal.SIGKILL)
        deadline = time.time() + 30
        alive = children
        while time.time() < deadline:
            alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, [(c.pid, c.name()) for c in alive]
    finally:
        try:
            pool.shutdown()
        finally:
            ray.shutdown()
