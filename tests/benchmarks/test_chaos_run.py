"""The external chaos harness (``benchmarks/chaos.py``, issue 29 items 4 and 6) on the smallest run that still has
its parts: an undisturbed reference and two trials of a fixed seed, 4 GRPO steps each, a checkpoint every 2,
the HF rollout engine (the quickest to start; the harness does not depend on the engine).

The harness process SIGKILLs real Ray worker processes of each trial's driver (found by process title), SIGTERMs the
driver and resumes the run where the plan says so, and judges every trial against the reference: exit codes, the
final adapter (max abs diff <= 1e-4), each trained sample id once, one metrics row per step. The plans of the seed
below kill rollout and reward actors, whose death the driver recovers from, so both trials must be ok; the victims
must be Ray workers of the kinds planned, dead afterwards, and no process may be left behind. Real pieces: local
Ray, the HF rollout engine, DeepSpeed on gloo.
"""
from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.benchmarks.harness import chaos_module
from tests.conftest import build_splits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# seed 27's trials: (1) a rollout actor killed, aimed at step 2's sync, then a reward actor at checkpoint 4;
# (2) a reward actor killed, aimed at step 2's scoring, then SIGTERM to the driver in step 3 and --resume
SEED, TRIALS = 27, "1,2"


_chaos = chaos_module


def test_two_chaos_trials_end_where_the_reference_ends(tiny_ckpt, tmp_path, capsys):
    chaos = _chaos()
    data = build_splits(tmp_path / "data", {"train": 4, "pref": 6, "bench": 2}, ["odd_one_out", "counting"])
    sets = {"model.path": tiny_ckpt, "data.train_dir": data / "train", "data.pref_dir": data / "pref",
            "data.bench_dir": data / "bench", "data.build_if_missing": "false", "data.max_clips": 3,
            "grpo.prompts_per_step": 3, "grpo.group_size": 2, "rollout.max_new_tokens": 8,
            "rollout.temperature": 1.0, "rollout.engine": "hf", "learner.num_workers": 1, "ray_num_cpus": 6,
            "grpo.lr": 2e-3}
    out = tmp_path / "chaos"
    args = ["--trials", "2", "--only", TRIALS, "--seed", str(SEED), "--out", str(out), "--lag", "0", "--config",
            str(ROOT / "configs" / "tiny_cpu.yaml"), "--steps", "4", "--checkpoint-every", "2", "--eval-items", "1",
            "--skip-sft", "--timeout", "300", "--check", *[f"--set={k}={v}" for k, v in sets.items()]]
    rc = chaos.main(args)
    printed = capsys.readouterr().out
    report = json.loads((out / "chaos.json").read_text())

    assert (out / "chaos.png").stat().st_size > 10_000 and "| trial | ok |" in (out / "chaos.md").read_text()
    assert "chaos: 2/2 trials ok" in printed and rc == 0, printed
    assert [t["trial"] for t in report["trials"]] == [0, 1]
    for t in report["trials"]:
        fired = [a for a in t["timeline"][0]["actions"] if a["fired"]]
        kills = [a for a in fired if a["kind"] != "driver"]
        assert kills and len(t["victims"]) == len(t["moments"]) == len(fired), t
        for a in kills:  # a Ray worker of the kind planned, dead now
            assert a["kind"] == a["wanted"] and chaos.kind_of(a["title"]) == a["kind"], a
            assert not psutil.pid_exists(a["pid"]) or psutil.Process(a["pid"]).status() == psutil.STATUS_ZOMBIE
        assert t["ok"] and t["max_abs_diff"] <= 1e-4 and t["rows"] == [1, 2, 3, 4] and t["ids_ok"]
        assert t["recovery_counts"]["resumes"] == len(fired) - len(kills)  # a SIGTERM: stopped cleanly, resumed
        assert t["leftover_processes"] == 0
    assert report["trials"][1]["recovery_counts"]["resumes"] == 1  # seed 27's second trial: SIGTERM + --resume
