"""stages.Recovery: the GRPO stage's answer to a dead process — rebuild up to learner.max_restarts, then one message.

The driver here is a stand-in that records the calls (the real rebuild runs in test_chaos.py with Ray, vLLM and
DeepSpeed); what is tested is the stage's bookkeeping: counting, a death during the rebuild, the rows cut, the message.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.exceptions as rex

from polyaudio_rl.core.deaths import RunAborted, WorkerDied
from polyaudio_rl.stages import Recovery

ROOT = Path(__file__).resolve().parents[2]


class _Driver:
    def __init__(self, max_restarts: int, fail_rebuilds: int = 0):
        self.cfg = SimpleNamespace(learner=SimpleNamespace(max_restarts=max_restarts), run_dir="file:///runs/x")
        self.learner_restarts, self.fail_rebuilds, self.rebuilt = 0, fail_rebuilds, []

    def name(self, death):
        return death.named("learner worker 0")

    def recover(self, death, checkpoint):
        self.learner_restarts += 1
        self.rebuilt.append((death.phase, checkpoint))
        if self.fail_rebuilds:
            self.fail_rebuilds -= 1
            raise WorkerDied("rollout actor", "weight sync after a recovery", rex.ActorDiedError())
        return 2


class _Logger:
    def __init__(self):
        self.rewound = []

    def rewind(self, step):
        self.rewound.append(step)


def _death(phase="checkpoint"):
    return WorkerDied("learner worker", phase, rex.ActorDiedError())


def test_rebuilds_and_cuts_the_rows_of_the_lost_steps(tmp_path):
    d, log = _Driver(max_restarts=2), _Logger()
    assert Recovery(d, tmp_path, log).recover(_death(), 4) == 2
    assert d.rebuilt == [("checkpoint", None)] and log.rewound == [2]


def test_a_death_during_the_rebuild_counts_as_one_more(tmp_path):
    d, log = _Driver(max_restarts=2, fail_rebuilds=1), _Logger()
    assert Recovery(d, tmp_path, log).recover(_death(), 3) == 2
    assert [p for p, _ in d.rebuilt] == ["checkpoint", "weight sync after a recovery"] and d.learner_restarts == 2


def test_past_max_restarts_one_message_names_what_where_and_the_resume_command(tmp_path):
    d, log = _Driver(max_restarts=1), _Logger()
    rec = Recovery(d, tmp_path, log)
    rec.recover(_death("train step"), 3)
    with pytest.raises(RunAborted) as got:
        rec.recover(_death("weight sync"), 5)
    assert str(got.value) == (
        "learner worker 0 died during weight sync at GRPO step 5 (ActorDiedError), after 1 recovery "
        "(learner.max_restarts=1); the newest valid checkpoint is none (the run starts over). Continue with:\n"
        "    python -m polyaudio_rl.train --resume file:///runs/x")
    assert isinstance(got.value.__cause__, WorkerDied) and len(d.rebuilt) == 1


def test_retry_runs_again_after_a_rebuild(tmp_path):
    d, calls = _Driver(max_restarts=2), []

    def evaluate():
        calls.append(1)
        if len(calls) == 1:
            raise _death("held-out evaluation")
        return "ok"

    rec = Recovery(d, tmp_path, _Logger())
    assert rec.retry(evaluate, 0) == "ok" and len(calls) == 2
    assert rec.retry(lambda: (_ for _ in ()).throw(_death("weight sync")), 0, redo=False) is None
    assert d.learner_restarts == 2


# ---------------------------------------------------------------------------------------------------- a signal after GRPO
class _StepDriver:
    """Stands in for GRPODriver in grpo_stage: steps that train nothing, checkpoints recorded, and a SIGTERM sent to
    this process when the pipeline is closed after the last step (where the harness's lag-1 trial 3 sent it)."""

    def __init__(self, cfg):
        self.cfg, self.saved = cfg, []
        self.learner, self.rollout, self.rewards, self.processor = SimpleNamespace(step=0), _Stats(), None, None

    def sync(self):
        return {}

    def step(self, step):
        return SimpleNamespace(metrics={"phase": "grpo", "reward/total": 0.5})

    def save_checkpoint(self, path, step, stopping=False):
        self.saved.append(step)

    def close(self):
        os.kill(os.getpid(), signal.SIGTERM)

    def summary(self):
        return {"trained_ids": []}

    def shutdown(self, timeline_path=None):
        pass


class _Stats:
    def stats(self):
        return []


def test_a_sigterm_after_the_last_step_ends_the_stage_normally(tmp_path, monkeypatch):
    """Ray's driver exits on SIGTERM (its handler: sys.exit); a signal that comes after the last GRPO step, while
    the pipeline closes or the held-out evaluation runs, must not end the run with exit 1 and no summary: the stage
    notes it and returns (every step is trained and checkpointed)."""
    from polyaudio_rl import data_setup, driver as driver_mod, stages
    from polyaudio_rl.core.config import load_config

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", ["grpo.steps=2", "learner.checkpoint_every=2",
                                                           "wandb_mode=disabled"])
    made = []
    monkeypatch.setattr(driver_mod.GRPODriver, "build",
                        classmethod(lambda cls, c, **kw: made.append(_StepDriver(c)) or made[-1]))
    monkeypatch.setattr(data_setup, "held_out_prompts", lambda *a, **kw: [])

    def ray_like(signum, frame):  # what ray.init installs in the driver
        sys.exit(1)

    old = signal.signal(signal.SIGTERM, ray_like)
    try:
        summary = stages.grpo_stage(cfg, tmp_path, init_adapter=None, resume=None, progress=False)
        assert signal.getsignal(signal.SIGTERM) is ray_like  # the stage's handler is gone with it
    finally:
        signal.signal(signal.SIGTERM, old)
    assert made[0].saved == [2] and "preempted" not in summary and summary["trained_ids"] == []
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [1, 2]
