"""The Ray reward actor pool on a real local Ray: one group per task of Table 2, scored by two actors, equals
the in-process scorer; judge calls through actors against a real local HTTP judge; a dead actor is replaced."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import ray

from polyaudio_rl.core.schema import TASKS
from polyaudio_rl.core.config.reward import JudgeConfig, RewardConfig
from rewards.actor import RewardPool
from rewards.scorer import Group, RewardScorer

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


task_batch = _load("task_batch")
judge_server_helper = _load("judge_server_helper")


@pytest.fixture(scope="module")
def local_ray():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_pool_scores_a_batch_from_each_task(local_ray):
    cfg = RewardConfig(num_actors=2)
    groups = task_batch.task_groups(Group)
    pool = RewardPool(cfg)
    try:
        pids = {ray.get(a.ping.remote())["pid"] for a in pool.actors}
        assert len(pids) == 2 and os.getpid() not in pids  # two separate actor processes
        batch = pool.score_batch(groups)
    finally:
        pool.shutdown()
    local = RewardScorer(cfg).score_batch(groups)
    assert [g.sample_id for g in batch.groups] == [g.sample.id for g in groups]  # order kept
    assert [g.task for g in batch.groups] == list(TASKS)
    for remote_g, local_g in zip(batch.groups, local.groups):
        assert remote_g.components == local_g.components
        assert remote_g.total == local_g.total
    # right answers get full correctness in every task; totals are weighted sums in [0, sum of weights]
    assert all(g.components["correctness"][0] == 1.0 for g in batch.groups)
    assert all(0.0 <= t <= sum(cfg.weights.values()) for g in batch.groups for t in g.total)
    means = batch.component_means()
    assert set(means) >= {"correctness", "parsimony", "consistency", "format", "total"}
    assert batch.n_items == 44 and batch.n_unscored == 0


def test_pool_with_judge_and_a_dead_actor(local_ray):
    with judge_server_helper.running_judge() as server:
        s = task_batch.make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, relevant=[2], sid="j-0")
        t = task_batch.make_sample("odd_one_out", {"type": "clip", "value": 1}, n_clips=3, relevant=[1], sid="j-1",
                                   freqs=[500, 600, 700])
        groups = [Group(s, ["ANSWER-RIGHT Audio 2", "Audio 3"]), Group(t, ["Audio 2", "ANSWER-RIGHT Audio 1"])]
        jc = JudgeConfig(base_url=server.url, model="good", structured_output="none", backoff_s=0.01)
        cfg = RewardConfig(correctness_mode="judge", num_actors=2, judge=jc,
                           weights={"correctness": 1.0, "parsimony": 0.0, "consistency": 0.0, "format": 0.0})
        pool = RewardPool(cfg)
        try:
            ray.kill(pool.actors[0])  # the pool must replace it and score its shard
            batch = pool.score_batch(groups)
            assert pool.replaced == 1
        finally:
            pool.shutdown()
    # judge: right (5 + 4)/2 -> 0.875, wrong (1 + 2)/2 -> 0.125 (see judge_server_helper)
    assert batch.groups[0].total == pytest.approx([0.875, 0.125])
    assert batch.groups[1].total == pytest.approx([0.125, 0.875])
    assert batch.judge_stats["requests"] == 8 and batch.n_unscored == 0
