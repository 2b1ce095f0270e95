"""The external chaos harness (``benchmarks/chaos.py``, issue 29 items 4 and 6): its pure parts — where a moment
is aimed, where it landed, victim kinds by process title, reproducible plans. Two real trials:
``test_chaos_run.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.benchmarks.harness import chaos_module

_chaos = chaos_module


# ---------------------------------------------------------------------------------------------------- the pure parts
# a reference: evaluation row at 10 s, step rows at 12 / 14 / 16 s, checkpoint 2 complete at 14.5 s
REF = [("row", 0, 10.0), ("row", 1, 12.0), ("row", 2, 14.0), ("ckpt", 2, 14.5), ("row", 3, 16.0)]
SPANS = [("generate", 12.1, 12.4), ("train", 12.5, 13.5), ("sync", 13.6, 13.7), ("sync", 13.7, 13.8)]


@pytest.mark.parametrize("phase, step, frac, pace, expected", [
    ("sync", 2, 0.5, 1.0, 1.7),        # the two sync spans joined: 13.6..13.8, from row 1 (12.0): 1.6 + 0.5 * 0.2
    ("sync", 2, 0.5, 2.0, 3.4),        # a trial running at half the reference's speed
    ("train", 2, 0.0, 1.0, 0.5),
    ("checkpoint", 2, 0.5, 1.0, 0.25),  # from row 2 (the save follows it) to the checkpoint: 0.5 s
    ("any", 3, 0.25, 1.0, 0.5),         # a quarter of step 3 (14.0..16.0)
    ("score", 2, 0.5, 1.0, 1.0),        # no score span in step 2: anywhere in the step
])
def test_delay_aims_at_the_reference_offset_of_the_phase(phase, step, frac, pace, expected):
    chaos = _chaos()
    prof = chaos.Profile.of(REF, SPANS)
    assert prof.delay(chaos.Action("kill", phase, step, frac), pace) == pytest.approx(expected)


@pytest.mark.parametrize("trial_rows, step, expected", [
    ([("row", 0, 0.0), ("row", 1, 4.0)], 2, 2.0),      # step 1 took 4 s against the reference's 2 s
    ([("row", 1, 0.0), ("row", 2, 20.0)], 3, 4.0),     # capped at 4
    ([("row", 0, 0.0)], 2, 1.0),                       # unknown yet
    ([("row", 1, 0.0), ("row", 2, 30.0), ("row", 1, 20.0), ("row", 2, 25.0)], 3, 2.5),  # redone: as it ran last
])
def test_pace_is_the_trials_last_step_over_the_reference(trial_rows, step, expected):
    assert _chaos().Profile.of(REF, SPANS).pace(trial_rows, step) == pytest.approx(expected)


@pytest.mark.parametrize("t, events, expected", [
    (14.2, REF, "checkpoint 2"),
    (14.2, REF[:3], "checkpoint 2 (never completed)"),  # the run died before checkpoint 2 was complete
    (14.7, REF, "between phases (step 3 in flight)"),
    (13.65, REF, "sync (step 2 in flight)"),
    (13.55, REF, "between phases (step 2 in flight)"),
    (12.2, REF, "generate (step 2 in flight)"),
    (9.0, REF, "start-up (before GRPO)"),               # before the held-out evaluation's row (the stream's prefetch)
])
def test_landed_names_the_phase_a_moment_fell_in(t, events, expected):
    assert _chaos().landed(t, events, SPANS, ckpt_steps=(2, 3)) == expected


def test_victim_kinds_by_process_title():
    chaos = _chaos()
    assert chaos.kind_of("ray::LearnerWorker.train_grpo_step") == "learner"
    assert chaos.kind_of("ray::RolloutActor") == "rollout" and chaos.kind_of("ray::RewardActor") == "reward"
    assert chaos.kind_of("ray::MapWorker(MapBatches(DecodeStage)).submit") == "data"
    for title in ("ray::IDLE", "ray::DashboardAgent", "ray::_StatsActor", "/usr/bin/python -m x"):
        assert chaos.kind_of(title) is None


def test_plans_are_reproducible_per_trial_and_cover_every_kind():
    chaos = _chaos()
    six = chaos.plans(1, 6, 6, 2)
    assert chaos.plans(1, 6, 6, 2) == six and chaos.plans(1, 3, 6, 2) == six[:3] and chaos.plans(2, 6, 6, 2) != six
    assert {p[0].kind for p in six[:4]} == {"learner", "rollout", "reward", "data"}
    for plan in six:
        anchors = [a.step if a.phase == "checkpoint" else a.step - 1 for a in plan]
        assert anchors == sorted(set(anchors)) and all(1 <= a.step <= 6 for a in plan)  # each anchor comes later
        assert all(a.what == "kill" for a in plan[:-1]) and (plan[-1].what == "kill" or plan[-1].step < 6)
        assert all(a.step in (2, 4, 6) for a in plan if a.phase == "checkpoint")
        # a Ray Data worker is alive only while the stream's pipeline runs: its kills aim there, not at a step
        assert all((a.phase == "stream") == (a.kind == "data") for a in plan if a.what == "kill")


def test_an_invocation_split_with_only_keeps_the_other_parts_trials_of_the_same_plan(tmp_path):
    chaos = _chaos()
    plan = {"seed": 1, "lag": 1, "steps": 6, "checkpoint_every": 2, "config": "c.yaml", "overrides": ["x=1"],
            "start": ["--init-adapter", "A"]}
    (tmp_path / "chaos.json").write_text(json.dumps({**plan, "commit": "abc", "trials": [
        {"trial": 0, "ok": True}, {"trial": 1, "ok": False}, {"trial": 2, "ok": True, "commit": "def"}]}))
    assert chaos.earlier_trials(tmp_path, plan, chosen=[1]) == [
        {"trial": 0, "ok": True, "commit": "abc"}, {"trial": 2, "ok": True, "commit": "def"}]
    assert chaos.earlier_trials(tmp_path, {**plan, "seed": 2}, chosen=[1]) == []  # another plan: nothing kept
    assert chaos.earlier_trials(tmp_path / "none", plan, chosen=[1]) == []


def test_a_reused_reference_is_matched_by_its_command_without_interpreter_and_run_dir():
    chaos = _chaos()
    a = ["/venv/bin/python", "-m", "polyaudio_rl.train", "--run-dir", "/out/s1/reference", "grpo.steps=6"]
    b = ["/other/python", "-m", "polyaudio_rl.train", "--run-dir", "/out/s2/reference", "grpo.steps=6"]
    assert chaos._portable(a) == chaos._portable(b) == ["-m", "polyaudio_rl.train", "--run-dir", "RUN_DIR",
                                                         "grpo.steps=6"]
    assert chaos._portable(a) != chaos._portable(a[:-1] + ["grpo.steps=4"])


def test_the_summary_line_counts_kills_and_sigterms_in_a_checkpoint_or_a_sync_apart():
    trials = [{"ok": True, "victims": ["learner:1", "driver:9"],
               "moments": [{"landed": "checkpoint 2+generate"}, {"landed": "sync (step 4 in flight)"}]},
              {"ok": False, "victims": ["reward:2"], "moments": [{"landed": "train (step 3 in flight)"}]}]
    assert _chaos().summary_line(trials, 1, 2) == ("chaos: 1/2 trials ok (lag 1, seed 2); victims driver 1, learner 1, "
                                                   "reward 1; 1 kill(s) and 1 SIGTERM(s) landed in a checkpoint or a sync")


# ------------------------------------------------------------------------------------- an action's anchor row
# a trial: rows 1..4, the first kill at 9.5 s (after row 4), a restart from checkpoint 4: rows 5, 6 (row 4 never again)
AFTER_CKPT4 = [("row", 1, 5.0), ("row", 2, 6.0), ("row", 3, 7.0), ("row", 4, 9.0), ("ckpt", 4, 9.2),
               ("row", 5, 20.0), ("row", 6, 21.0)]
# the same kill, a restart from checkpoint 2: rows 3 and 4 logged again
AFTER_CKPT2 = [("row", 1, 5.0), ("row", 2, 6.0), ("row", 3, 7.0), ("row", 4, 9.0), ("row", 3, 18.0),
               ("row", 4, 19.0), ("row", 5, 20.0)]


@pytest.mark.parametrize("phase, step, events, after, expected", [
    ("any", 5, AFTER_CKPT4, 0.0, (5, 9.0)),            # the row of step 4, before any kill: as planned
    ("any", 5, AFTER_CKPT4, 9.5, (6, 20.0)),           # row 4 came before the kill and is not logged again: the
    ("sync", 5, AFTER_CKPT4, 9.5, (6, 20.0)),          # first later row (5), the action moved to step 6
    ("any", 7, AFTER_CKPT4, 9.5, (7, 21.0)),           # row 6 logged after the kill: as planned
    ("any", 5, AFTER_CKPT2, 9.5, (5, 19.0)),           # the restart from checkpoint 2 logs row 4 again: as planned
    ("any", 6, AFTER_CKPT2, 9.5, (6, 20.0)),
    ("checkpoint", 4, AFTER_CKPT4, 9.5, (6, 21.0)),    # a checkpoint moves to the next checkpoint step's row
    ("checkpoint", 4, AFTER_CKPT2, 9.5, (4, 19.0)),
])
def test_an_action_anchors_on_its_row_or_moves_to_the_step_in_flight(phase, step, events, after, expected):
    chaos = _chaos()
    got = chaos.anchor_row(chaos.Action("kill", phase, step, 0.5), events, after, ckpt_steps=(2, 4, 6))
    assert got is not None and (got[0].step, got[1]) == expected
    assert got[0].phase == phase and got[0].frac == 0.5


@pytest.mark.parametrize("events", [AFTER_CKPT4[:5], AFTER_CKPT2[:4]])
def test_an_action_waits_while_no_row_after_the_last_action_reaches_its_anchor(events):
    chaos = _chaos()
    assert chaos.anchor_row(chaos.Action("sigterm", "any", 5, 0.1), events, 9.5) is None


def test_a_second_action_fires_after_a_restart_that_does_not_log_its_anchor_row_again(tmp_path):
    """Seed 1's trial 1 at lag 1: a kill aimed at step 4 came after step 4's row, the restart resumed from checkpoint
    4, and the SIGTERM anchored on step 4's row never fired. It now fires in the step in flight after the next row
    (a stand-in driver: a sleeping child with no Ray workers to kill; the test writes the rows)."""
    import subprocess
    import threading
    import time

    chaos = _chaos()
    metrics = tmp_path / "metrics.jsonl"
    row = lambda s: json.dumps({"phase": "grpo", "step": s}) + "\n"  # noqa: E731
    proc = subprocess.Popen(["sleep", "30"])
    try:
        watcher = chaos.Watcher(tmp_path, proc)
        watcher.start()
        metrics.write_text("".join(row(s) for s in (1, 2, 3, 4)))  # step 4's row, then the kill (aimed at step 4)
        time.sleep(0.3)
        prof = chaos.Profile.of([("row", s, float(s)) for s in range(7)] + [("ckpt", 4, 4.1)], [])
        acts = [chaos.Action("kill", "any", 4, 0.0, "learner"), chaos.Action("sigterm", "any", 5, 0.0)]
        done: list[dict] = []
        actor = threading.Thread(target=chaos.execute, args=(watcher, proc, acts, prof, done), daemon=True)
        actor.start()
        deadline = time.time() + 20
        while len(done) < 2 and time.time() < deadline:  # the kill carried out, the SIGTERM waiting for its row
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(done) == 2 and not done[0]["fired"] and not done[1]["fired"] and proc.poll() is None, done
        with open(metrics, "a") as fh:  # the restart from checkpoint 4 logs row 5 next
            fh.write(row(5))
        actor.join(10)
        assert proc.wait(10) == -15, done  # the SIGTERM reached the driver
    finally:
        proc.kill()
    assert done[0]["error"] == "no Ray worker alive" and done[1]["fired"] and done[1]["kind"] == "driver"
    assert done[1]["aim"] == "any of step 6 (drawn: step 5, passed)"


def test_a_kill_aimed_at_the_stream_waits_for_its_decode_actor_and_kills_it(tmp_path):
    """A Ray Data victim: the harness waits for the prompt stream's decode actor (a ``ray::MapWorker`` process of
    the driver) and SIGKILLs it, preferring it to another Ray Data worker alive (a stand-in driver whose children
    carry those process titles; no rows at all: the moment is not a step's)."""
    import subprocess
    import threading

    chaos = _chaos()
    script = ('(exec -a "ray::ReadFilesParquetV2" sleep 30) & '
              '(exec -a "ray::MapWorker(MapBatches(DecodeStage)).__init__" sleep 1.5); '  # then started: decoding
              '(exec -a "ray::MapWorker(MapBatches(DecodeStage)).submit" sleep 30) & wait')
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        watcher = chaos.Watcher(tmp_path, proc)
        watcher.start()
        done: list[dict] = []
        act = chaos.Action("kill", "stream", 3, 0.25, "data", pick=0.0)
        actor = threading.Thread(target=chaos.execute, args=(watcher, proc, [act], chaos.Profile.of([], []), done),
                                 daemon=True)
        actor.start()
        actor.join(20)
        assert done and done[0]["fired"], done
        assert done[0]["kind"] == "data" and done[0]["title"] == "ray::MapWorker(MapBatches(DecodeStage)).submit 30"
        assert done[0]["aim"] == "the prompt stream's decode"
        assert any(w[2].startswith("ray::ReadFilesParquetV2") for w in chaos.ray_workers(proc.pid))  # left alone
        first = min(t for k, t in watcher.sightings if k == "decode")
        assert done[0]["t"] >= first + 0.25 * chaos.STREAM_SPAN_S - 0.05
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("title, expected", [
    ("ray::LearnerWorker.sync_half", True), ("ray::RolloutActor.sync      ", True),
    ("ray::RolloutActor.receive_and_sync", True), ("ray::LearnerWorker.submit_sync_half", True),
    ("ray::LearnerWorker.grpo_step", False), ("ray::RolloutActor", False), ("ray::RolloutActor.generate", False),
    ("ray::RewardActor.score_items", False), ("ray::MapWorker(MapBatches(DecodeStage)).submit", False),
])
def test_a_sync_is_read_from_the_learner_or_rollout_workers_process_title(title, expected):
    assert _chaos().in_sync(title) is expected


@pytest.mark.parametrize("sync_shows", [True, False])
def test_a_kill_aimed_at_a_sync_fires_when_a_worker_shows_one(tmp_path, sync_shows):
    """A stand-in driver: a reward actor (the victim drawn) and a learner worker that updates for 1 s, then syncs
    (or, ``sync_shows`` False, logs the step's row without a sync seen: the kill falls back to the reference's timing,
    here 0 s from its row, and still fires)."""
    import signal
    import subprocess
    import threading
    import time

    chaos = _chaos()
    learner = ('(exec -a "ray::LearnerWorker.grpo_step" sleep 1); (exec -a "ray::LearnerWorker.sync_half" sleep 30)'
               if sync_shows else '(exec -a "ray::LearnerWorker.grpo_step" sleep 30)')
    t0 = time.time()  # the update ends 1 s after this at the earliest
    proc = subprocess.Popen(["bash", "-c", f'(exec -a "ray::RewardActor" sleep 30) & {learner} & wait'],
                            start_new_session=True)
    metrics = tmp_path / "metrics.jsonl"
    row = lambda s: json.dumps({"phase": "grpo", "step": s}) + "\n"  # noqa: E731
    try:
        watcher = chaos.Watcher(tmp_path, proc)
        watcher.start()
        metrics.write_text(row(1))
        prof = chaos.Profile.of([("row", 0, 0.0), ("row", 1, 1.0), ("row", 2, 2.0)], [])  # no spans: 0 s into step 2
        done: list[dict] = []
        act = chaos.Action("kill", "sync", 2, 0.0, "reward")
        actor = threading.Thread(target=chaos.execute, args=(watcher, proc, [act], prof, done), daemon=True)
        actor.start()
        if not sync_shows:
            time.sleep(1.5)
            with open(metrics, "a") as fh:
                fh.write(row(2))
        actor.join(20)
        assert done and done[0]["fired"] and done[0]["kind"] == "reward", done
        assert done[0]["sync_seen"] is sync_shows
        assert done[0]["t"] - t0 >= 1.0  # after the update (1 s), or after row 2 (1.5 s)
    finally:
        import os
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
