"""The pipelined driver's version gate (pure) — the integration runs are in test_train.py."""
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
