"""The driver's pure parts: the version gate, advantages (computed here only), reward metrics from BatchScores, the
shared policy-version counter. The integration runs are in test_train.py and test_chaos.py."""
from __future__ import annotations

import pytest

from polyaudio_rl.driver import learner_metric_name, min_sample_version

# min_sample_version(batch step, first step, first version, max lag, checkpoint steps): the learner trains step b at
# V_b = first_version + (b − first_step); the batch may lag by k, never across a checkpoint (needs V_{c+1}).
GATE = [
    # b, first, v0, k, ckpts, need
    (1, 1, 1, 0, [], 1),          # synchronous: the batch of step 1 from the first synced policy
    (5, 1, 1, 0, [], 5),          # V_5 = 5
    (5, 1, 1, 1, [], 4),          # one version behind
    (5, 1, 1, 2, [], 3),          # two versions behind
    (3, 1, 1, 1, [2], 3),         # step 2 checkpointed: batch 3 comes from the checkpoint's policy V_3
    (4, 1, 1, 1, [2], 3),         # batch 4 may lag by one again: V_4 − 1 = 3
    (4, 1, 1, 3, [2], 3),         # a larger lag still stops at the checkpoint
    (4, 3, 10, 1, [2, 4], 10),    # resumed at step 3 (v 10): checkpoint 2 is before this pipeline, V_4 − 1 = 10
    (2, 1, 1, 1, [1], 2),         # checkpoint right before
]


@pytest.mark.parametrize("b, first, v0, k, ckpts, need", GATE)
def test_min_sample_version_table(b, first, v0, k, ckpts, need):
    assert min_sample_version(b, first, v0, k, ckpts) == need


@pytest.mark.parametrize("key, name", [("loss", "loss"), ("grad_norm", "grad_norm"), ("tokens", "learner/tokens"),
                                       ("reward/x", "reward/x"), ("is_weight_mean", "learner/is_weight_mean")])
def test_learner_metric_names(key, name):
    assert learner_metric_name(key) == name


RAY_COPY = "/tmp/ray/session_latest/runtime_resources/working_dir_files/_ray_pkg_0a1b2c"


@pytest.mark.parametrize("run_dir, cwd, refused", [
    ("runs/x", RAY_COPY, True),                      # the default, relative: inside the copy Ray deletes
    (f"{RAY_COPY}/runs/x", RAY_COPY, True),
    ("/shared/runs/x", RAY_COPY, False),             # absolute, elsewhere: fine
    ("../../../../../../shared/x", RAY_COPY, False),
    ("runs/x", "/home/me/polyaudio", False),         # not a Ray job copy
])
def test_run_dir_inside_rays_working_dir_copy_is_refused(run_dir, cwd, refused):
    from pathlib import Path

    from polyaudio_rl.train import run_dir_problem

    why = run_dir_problem(Path(run_dir), Path(cwd))
    assert (why is not None) == refused
    if refused:
        assert "--run-dir" in why and "Ray deletes" in why


# -- advantages: computed once, in the driver (the learner takes item.advantage as given) ----------------------------
def _items(gids):
    from polyaudio_rl.core.batching import TrainItem

    return [TrainItem(None, [1], group_id=g) for g in gids]


def _grpo(**kw):
    from types import SimpleNamespace

    base = dict(advantage="drgrpo", eps=1e-6, dynamic_sampling=False, zero_spread_tol=0.0)
    return SimpleNamespace(**{**base, **kw})


# group a: rewards 1, 0, 0, 1 (mean 0.5); group b: 1, 1 (zero spread)
ADV = [
    # estimator, dynamic sampling, kept group ids, advantages
    ("drgrpo", False, list("aaaabb"), [0.5, -0.5, -0.5, 0.5, 0.0, 0.0]),
    ("drgrpo", True, list("aaaa"), [0.5, -0.5, -0.5, 0.5]),  # group b dropped: no signal
    # unbiased std of 1, 0, 0, 1 is sqrt(1/3) = 0.57735: 0.5 / 0.57735 = 0.866025
    ("grpo", True, list("aaaa"), [0.866025, -0.866025, -0.866025, 0.866025]),
]


@pytest.mark.parametrize("estimator, dynamic, kept, adv", ADV)
def test_group_advantages_table(estimator, dynamic, kept, adv):
    from polyaudio_rl.driver import group_advantages

    items, m = group_advantages(_items("aaaabb"), [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
                                _grpo(advantage=estimator, dynamic_sampling=dynamic))
    assert [it.group_id for it in items] == kept
    assert [it.advantage for it in items] == pytest.approx(adv, abs=1e-5)
    assert m["groups/zero_spread_frac"] == 0.5 and m["learner/reward_mean"] == pytest.approx(4 / 6)
    assert ("learner/dropped_group_frac" in m) == dynamic


def test_group_advantages_of_only_zero_spread_groups_is_nothing_to_train():
    from polyaudio_rl.driver import group_advantages

    items, m = group_advantages(_items("bb"), [1.0, 1.0], _grpo(dynamic_sampling=True))
    assert items == [] and m["learner/dropped_group_frac"] == 1.0


def test_reward_metrics_come_from_batch_scores():
    from polyaudio_rl.driver import reward_metrics
    from rewards.scorer import BatchScores, GroupScores

    groups = [GroupScores("s1", "counting", {"correctness": [1.0, 0.0], "format": [1.0, 1.0]}, [2.0, 1.0], [{}, {}]),
              GroupScores("s2", "odd_one_out", {"correctness": [1.0, None], "format": [0.0, None]}, [1.0, None],
                          [{}, {"unscored": "judge down"}])]
    m = reward_metrics(BatchScores(groups, {"correctness": 1.0, "format": 1.0}))
    assert m == pytest.approx({"reward/correctness": 2 / 3, "reward/format": 2 / 3, "reward/total": 4 / 3,
                               "correctness/counting": 0.5, "correctness/odd_one_out": 1.0, "reward/unscored": 1.0})


# -- the version gate's counter: waiters block on a condition, woken by a sync or a stop ------------------------------
def test_policy_version_wakes_a_waiter_when_the_version_is_served():
    import threading

    from polyaudio_rl.core.policy_version import PolicyVersion

    pv = PolicyVersion(trained=3, served=3)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(pv.wait_served(4, timeout=30)))
    waiter.start()
    assert pv.bump() == 4 and pv.served == 3  # the learner moved on; the actors do not serve it yet
    pv.serve(4)
    waiter.join(timeout=30)
    assert got == [True]
    assert pv.wait_served(2, timeout=0)  # an older version: at once


def test_policy_version_waiter_gives_up_on_stop_or_timeout():
    import threading

    from polyaudio_rl.core.policy_version import PolicyVersion

    pv, stop = PolicyVersion(), threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(pv.wait_served(1, stop=stop.is_set)))
    waiter.start()
    stop.set()
    pv.wake()
    waiter.join(timeout=30)
    assert got == [False] and not waiter.is_alive()
    assert pv.wait_served(1, timeout=0.01) is False


# -- a stop between checkpoints keeps the batches sampled ahead from older policies (issue 30) -----------------------
def _stopped_driver(lag, every, steps, first, version, sampled):
    """A driver stopped after a step: pipeline ``first`` = (step, version), learner at ``version``, and the batches
    made ahead, ``sampled`` = {step: version that sampled it} (as done futures)."""
    import json
    from concurrent.futures import Future
    from types import SimpleNamespace

    from actors.rollout_engine import Completion, RolloutGroup
    from polyaudio_rl.core.policy_version import PolicyVersion
    from polyaudio_rl.driver import GRPODriver, RolloutBatch

    d = GRPODriver.__new__(GRPODriver)
    d.cfg = SimpleNamespace(grpo=SimpleNamespace(steps=steps), learner=SimpleNamespace(checkpoint_every=every))
    d.lag, d._first, d.policy, d._batches = lag, first, PolicyVersion(), {}
    d.policy.trained = version
    for step, v in sampled.items():
        groups = [RolloutGroup(f"{step}:{i}:s{i}", f"s{i}", v, [Completion([5, 7, 2], [-0.1, -2.5e-9, json.loads(
            "-Infinity")], "stop", "Clip 2."), Completion([9], [-1 / 3], "length", "3")], 11, 0) for i in range(2)]
        fut = Future()
        fut.set_result(RolloutBatch(step, [], groups, None, {}, 0))
        d._batches[step] = fut
    return d


@pytest.mark.parametrize("lag, every, steps, first, version, sampled, stop, kept", [
    (1, 0, 4, (1, 1), 2, {2: 1, 3: 2}, 1, {2: 1}),         # the case: batch 2 sampled one version behind
    (1, 2, 4, (1, 1), 3, {3: 3, 4: 3}, 2, {}),             # stopped at a checkpoint step: a barrier, nothing kept
    (0, 0, 4, (1, 1), 2, {2: 2}, 1, {}),                   # synchronous: nothing sampled ahead
    (2, 0, 6, (1, 1), 4, {4: 2, 5: 3, 6: 4}, 3, {4: 2, 5: 1}),  # lag 2: two batches behind
    (2, 0, 4, (1, 1), 4, {4: 2}, 3, {4: 2}),               # never past the last step
    (1, 0, 4, (3, 7), 8, {4: 7}, 3, {4: 1}),               # a resumed pipeline (first step 3 at version 7)
])
def test_inflight_batches_kept_at_a_stop_and_replayed_with_their_lag(lag, every, steps, first, version, sampled,
                                                                    stop, kept):
    import json

    d = _stopped_driver(lag, every, steps, first, version, sampled)
    got = json.loads(json.dumps(d.inflight_batches(stop)))  # as trainer_state.json stores it
    assert {b["step"]: b["groups"][0]["behind"] for b in got} == kept
    for rec in got:  # as the stopped run sampled them (the conversion itself: tests/polyaudio_rl/test_inflight.py)
        orig = d._batches[rec["step"]].result().groups
        assert [g["group_id"] for g in rec["groups"]] == [g.group_id for g in orig]
