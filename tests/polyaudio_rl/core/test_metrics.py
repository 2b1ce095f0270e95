import json
import os
import time
from pathlib import Path

import pytest

from polyaudio_rl.core.metrics import MetricsLogger, plot_curves, read_metrics


def test_jsonl_resume_keeps_last_record_per_step_and_plots(tmp_path):
    log = MetricsLogger(tmp_path, wandb_mode="disabled")
    for s in range(1, 4):
        log.log(s, {"reward/total": 0.1 * s, "kl": 0.01 * s, "nan": float("nan")})
    log.close()
    log = MetricsLogger(tmp_path, wandb_mode="disabled")  # a resumed run re-logs step 3
    log.log(3, {"reward/total": 0.9, "kl": 0.02})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert recs[-1]["reward/total"] == 0.9 and recs[0]["nan"] is None
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_rewind_drops_the_rows_of_steps_after_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, wandb_mode="disabled")
    for s in range(1, 5):
        log.log(s, {"reward/total": 0.1 * s})
    log.log(2, {"phase": "eval_after", "eval/accuracy": 0.5})
    assert log.rewind(2) == 2  # steps 3 and 4 are lost with the learner that made them
    log.log(3, {"reward/total": 0.7})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("reward/total")) for r in rows] == [(1, 0.1), (2, 0.2), (2, None), (3, 0.7)]


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_cut_rows_after_keeps_steps_up_to_the_checkpoint(tmp_path):
    from polyaudio_rl.core.metrics import cut_rows_after

    f = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "phase": "eval_before"}, {"step": 1, "phase": "grpo"}, {"step": 2, "phase": "grpo"},
            {"step": 3, "phase": "grpo"}, {"step": 4, "phase": "grpo"}]
    _write(f, rows)
    assert cut_rows_after(f, 2) == 2
    assert [json.loads(line) for line in f.read_text().splitlines()] == rows[:3]
    assert cut_rows_after(f, 2) == 0 and cut_rows_after(tmp_path / "none.jsonl", 2) == 0
    assert cut_rows_after(f, -1) == 3 and f.read_text() == ""  # nothing checkpointed: every row goes
    _write(f, rows[:3], tail='{"step": 3, "pha')  # a write cut short by a kill: that line goes too
    assert cut_rows_after(f, 5) == 1 and f.read_text().endswith("}\n") and len(f.read_text().splitlines()) == 3
    _write(f, rows[:3] + [{"step": 2, "phase": "eval_after"}])
    assert cut_rows_after(f, 2, phases_at_step=("eval_after",)) == 1  # an evaluation after the checkpoint at 2
    assert [json.loads(line) for line in f.read_text().splitlines()] == rows[:3]
    _write(f, [rows[0], "garbage", rows[1]])
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics row"):
        cut_rows_after(f, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_resumed_logger_leaves_one_row_per_step(tmp_path):
    """A stopped run logged steps 1-5 and checkpointed at 3; --resume reopens at 3 and redoes 4, 5."""
    first = MetricsLogger(tmp_path, wandb_mode="disabled")
    first.log(0, {"phase": "eval_before", "eval/accuracy": 0.25})
    for s in range(1, 6):
        first.log(s, {"phase": "grpo", "loss": float(s)})
    first.close()
    again = MetricsLogger(tmp_path, wandb_mode="disabled", resume_step=3)
    for s in (4, 5):
        again.log(s, {"phase": "grpo", "loss": 10.0 * s})
    again.log(5, {"phase": "eval_after", "eval/accuracy": 0.5})
    again.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in rows] == [(0, "eval_before"), (1, "grpo"), (2, "grpo"), (3, "grpo"),
                                                     (4, "grpo"), (5, "grpo"), (5, "eval_after")]
    assert [r.get("loss") for r in rows[4:6]] == [40.0, 50.0]


def test_resumed_offline_wandb_run_is_rewound_to_the_checkpoint_step(tmp_path, monkeypatch):
    """Offline wandb: the resumed process records a rewind of the same run id to the checkpoint's step
    (``resume_from``), applied by wandb when the run is synced; logging continues after that step."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run-a"
    first = MetricsLogger(run, wandb_mode="offline")
    if first._wandb is None:  # wandb's service did not start on this machine (it said why on stdout)
        pytest.skip("wandb could not start here")
    assert first._wandb.id == "run-a"
    for s in range(1, 5):
        first.log(s, {"loss": float(s)})
    first.close()
    # wandb names an offline run's folder by its start time to the second: a resumed process that starts within the
    # same second as the first (a warm wandb service) would share the folder; a real resume starts later
    time.sleep(1.1)
    again = MetricsLogger(run, wandb_mode="offline", resume_step=2)
    assert again._wandb is not None and again._wandb.id == "run-a" and again._wandb.starting_step == 3
    moment = again._wandb.settings.resume_from
    assert (moment.run, moment.metric, moment.value) == ("run-a", "_step", 2)
    again.log(3, {"loss": 30.0})
    again.close()
    records = sorted((run / "wandb").glob("offline-run-*-run-a/run-run-a.wandb"))
    assert len(records) == 2
    for _ in range(120):  # wandb's service writes the offline record in the background
        if b'"branch_point":{"run_id":"run-a","step":2}' in records[1].read_bytes():
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{records[1]}: no rewind (branch_point) recorded")


_WANDB_DIES = r"""
import json, os, signal, sys, time
import psutil
from polyaudio_rl.core.metrics import MetricsLogger

log = MetricsLogger(sys.argv[1], wandb_mode="offline")
if log._wandb is None:
    print("NO-WANDB")
    sys.exit(0)
log.log(1, {"loss": 1.0})
services = [p for p in psutil.Process().children(recursive=True) if "wandb" in " ".join(p.cmdline())]
for p in services:  # as a SIGTERM to the job's process group does
    p.send_signal(signal.SIGTERM)
psutil.wait_procs(services, timeout=30)
print("KILLED", len(services), flush=True)
log.log(2, {"loss": 2.0})
log.close()
print("CLOSED")
"""


def test_a_wandb_service_that_died_never_stops_the_rows_or_the_clean_close(tmp_path):
    """wandb's service killed under a live run (SIGTERM, as ``ray job stop`` sends the job's process group): the next
    rows still reach metrics.jsonl and ``close()`` returns (wandb's ``finish()`` error is reported, not raised)."""
    import subprocess
    import sys

    pytest.importorskip("wandb")
    root = Path(__file__).resolve().parents[3]
    from wandb import env as wandb_env

    # its own wandb service, not one this test process started (wandb passes its address down in the environment)
    env = {k: v for k, v in os.environ.items() if k != wandb_env.SERVICE}
    env.update(PYTHONPATH=str(root), WANDB_SILENT="true")
    out = subprocess.run([sys.executable, "-c", _WANDB_DIES, str(tmp_path / "run")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=180)
    if "NO-WANDB" in out.stdout:
        pytest.skip("wandb could not start here")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "KILLED" in out.stdout and "KILLED 0" not in out.stdout and "CLOSED" in out.stdout, out.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
