"""External chaos harness (issue 29 items 4 and 6): SIGKILL random Ray workers of a running GRPO job at random
moments, from outside the driver, and check that every run still ends where the undisturbed run ends.

    python benchmarks/chaos.py --trials 6 --seed 1 --out artifacts/bench/chaos [--lag 0|1]

1. Once: LoRA SFT of the configuration (``configs/demo.yaml``) into OUT/sft; every run starts GRPO from that adapter
   (``--init-adapter``), so SFT runs once (``--init-adapter CKPT`` reuses one; ``--skip-sft`` starts from the base
   model).
2. The reference, OUT/reference: an undisturbed run (6 GRPO steps, a checkpoint every 2), watched as the trials are
   watched: when each step's metrics row appears and when each checkpoint is complete; with its ``timeline.json``
   (train, weight sync, generate, score spans) these give each phase's offset from the row of the step before.
3. N trials, OUT/trial-NN, of the same command. This process (never the driver) follows a plan drawn from
   ``random.Random(seed)``: per trial one kill or two, each a (phase, step, fraction, victim kind). A kill waits for
   its anchor — the metrics row of the step before; for a checkpoint the row of its own step, which the save
   follows — sleeps the reference's offset of that phase plus the fraction of its length, then SIGKILLs one live
   process of that kind among the driver's Ray workers, found by process title among the driver's descendants
   (``ray::LearnerWorker``, ``ray::RolloutActor``, ``ray::RewardActor``, Ray Data's ``ray::MapWorker`` and
   read/shuffle tasks; when none of the kind drawn is alive, another kind at once — after waiting up to 5 s when one
   was alive within the last 5 s, e.g. an actor being restarted; the moment recorded is the kill's own). Some trials
   then SIGTERM the driver in a later step and run ``--resume``. An action whose anchor row was logged before the
   previous action and is not logged again (the restart resumed from a checkpoint past it) moves to the step in
   flight after the next row. A Ray Data worker lives only while the prompt stream's pipeline runs (its start-up
   prefetch into GRPO's first steps, and after a recovery): its kill waits for the stream's decode actor to be seen,
   not for a step.
4. A trial is ok when every process of it exited 0, its final adapter equals the reference's (max abs diff <= 1e-4),
   it trained the reference's sample ids, each exactly once, and ``metrics.jsonl`` has one row per step. Where a
   kill landed is read from the trial's own ``timeline.json`` and checkpoint times: on a loaded machine a moment aimed
   at a sync may land beside it, so both the aim and the landing are recorded.

Writes OUT/chaos.json (``{"trials": [{"victims", "moments", "ok", "max_abs_diff", "recoveries", ...}]}``),
OUT/chaos.png (each trial's timeline: steps, checkpoints, kills) and OUT/chaos.md (the table for the docs); prints a
line per trial, a table and a summary line (``--report-only`` rebuilds them from chaos.json). Each run's console
output: OUT/<run>/train.log. Processes a driver leaves behind are killed and counted. A long invocation can be split
with ``--only``: each part adds its trials to OUT/chaos.json (same seed, lag, steps and command), and
``--reuse-reference`` reuses the reference the first part ran (OUT/reference/reference.json).

The parts live in ``benchmarks/chaoslib/``: ``victims`` (which processes, the kill), ``moments`` (the plans, the
reference's phase timing, where a moment landed), ``watch`` (following a driver from outside), ``verdict`` (a trial's
checks) and ``report`` (chaos.json / .md / .png).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.chaoslib.moments import (DECODE_TITLE, KIND_WEIGHTS, PHASE_WEIGHTS, STREAM_PHASE,  # noqa: E402
                                         STREAM_SPAN_S, Action, Profile, anchor_row, draw_plan, grpo_start, in_sync,
                                         landed, plans, timeline_spans)
from benchmarks.chaoslib.report import (earlier_trials, git_commit, markdown, plot, progress_line,  # noqa: E402
                                        report_only, summary_line, table, trial_record, write_report)
from benchmarks.chaoslib.verdict import TOL, adapter, judge, max_abs_diff  # noqa: E402
from benchmarks.chaoslib.verdict import _summary  # noqa: E402
from benchmarks.chaoslib.victims import KIND_TITLES, kill_worker, kind_of, ray_workers, reap  # noqa: E402
from benchmarks.chaoslib.watch import Watcher  # noqa: E402

ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


def execute(watcher: Watcher, proc: subprocess.Popen, actions: list[Action], profile: Profile,
            out: list[dict[str, Any]]) -> None:
    """Carry out the actions in order, each at its moment (:func:`moment`); stops when the driver exits (the actions
    left are recorded as not fired)."""
    after = 0.0
    for act in actions:
        rec: dict[str, Any] = {"action": asdict(act), "aim": aim_text(act), "fired": False}
        out.append(rec)
        got = moment(watcher, act, after, profile, rec)
        if got is None or proc.poll() is not None:
            rec.setdefault("error", "the driver exited before the moment")
            return
        act, at = got
        time.sleep(max(0.0, at - time.time()))
        if proc.poll() is not None:
            rec["error"] = "the driver exited before the moment"
            return
        rec["t"] = rec["aimed_t"] = time.time()
        if act.what == "kill":  # its "t" becomes the kill's own (after a wait for the kind drawn)
            rec.update(kill_worker(proc.pid, act, last_seen=watcher.kind_seen.get(act.kind),
                                   prefer=(DECODE_TITLE,) if act.phase == STREAM_PHASE else ()))
        else:
            os.kill(proc.pid, signal.SIGTERM)
            rec.update({"fired": True, "kind": "driver", "pid": proc.pid, "title": "SIGTERM to the driver"})
        after = rec["t"]


def aim_text(act: Action) -> str:
    return "the prompt stream's decode" if act.phase == STREAM_PHASE else f"{act.phase} of step {act.step}"


def moment(watcher: Watcher, act: Action, after: float, profile: Profile, rec: dict[str, Any]
           ) -> tuple[Action, float] | None:
    """The action as carried out and when. A kill aimed at the prompt stream: its decode actor's first sighting after
    ``after`` plus ``frac`` of STREAM_SPAN_S. Any other: its anchor row (moved to the step in flight when the run went
    past it before ``after``); then, aimed at a sync, the first learner worker or rollout actor seen in a sync method
    (when one is seen before the step's own row), otherwise the reference's delay of the phase aimed at, scaled by
    the trial's pace. None: the driver exited first."""
    if act.phase == STREAM_PHASE:
        seen = watcher.wait_kind("decode", after)
        if seen is None:
            rec["error"] = "no decode actor of the prompt stream was alive after the last action"
        return None if seen is None else (act, seen + act.frac * STREAM_SPAN_S)
    got = watcher.wait_anchor(act, after, sorted(profile.ckpts))
    if got is None:
        return None
    moved, anchor = got
    if moved.step != act.step:  # its anchor row came before the last action and was not logged again
        rec["aim"] = f"{act.phase} of step {moved.step} (drawn: step {act.step}, passed)"
    if moved.phase == "sync":  # by the workers' process titles (SYNC_WORKERS); else timed like the other phases
        seen = watcher.wait_sync(anchor, moved.step)
        rec["sync_seen"] = seen is not None
        if seen is not None:
            return moved, seen
    tmp = None
    if moved.phase == "checkpoint":  # the save follows the row: anchor on its temporary directory when seen
        tmp = watcher.wait_event("ckpt_tmp", moved.step, anchor - 0.05,
                                 timeout_s=2.0 + 2 * profile.ckpt_span(moved.step))
    with watcher._cond:
        events = list(watcher.events)
    return moved, (tmp or anchor) + profile.delay(moved, profile.pace(events, moved.step), from_tmp=tmp is not None)


@dataclass
class Segment:
    """One process of a trial (the run, or its ``--resume``): exit code (None: killed after the timeout), what the
    watcher saw, what was done to it, processes it left behind, the last error line of its log."""
    rc: int | None
    start: float
    wall_s: float
    events: list[tuple[str, int, float]]
    actions: list[dict[str, Any]] = field(default_factory=list)
    leftovers: int = 0
    error: str = ""


def last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errs = [ln for ln in lines if any(w in ln for w in ("Error", "Exception", "error:", "Killed", "Traceback"))]
    return (errs[-1] if errs else (lines[-1] if lines else ""))[:400]


def run_segment(cmd: list[str], run_dir: Path, log: Path, timeout_s: float, actions: list[Action] = (),
                profile: Profile | None = None) -> Segment:
    """Run one driver process to its end (or its timeout), watched, with the actions carried out from here."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **ENV)
    t0 = time.time()
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    watcher = Watcher(run_dir, proc)
    watcher.start()
    done: list[dict[str, Any]] = []
    actor = threading.Thread(target=execute, args=(watcher, proc, list(actions), profile, done), daemon=True)
    if actions:
        actor.start()
    try:
        rc: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    except BaseException:  # the harness is stopped (Ctrl-C, SIGTERM): the run goes with it
        proc.kill()
        watcher._poll_procs()
        reap(watcher.seen_pids, grace_s=0.0)
        raise
    watcher.join(10)
    if actor.is_alive():
        actor.join(5)
    seg = Segment(rc, t0, time.time() - t0, list(watcher.events), done, reap(watcher.seen_pids))
    if rc != 0:
        seg.error = f"timed out after {timeout_s:.0f} s" if rc is None else last_error(log)
    return seg


@dataclass
class Setup:
    """What every run of one harness invocation shares."""
    out: Path
    config: str
    overrides: list[str]
    start: list[str]  # ["--init-adapter", CKPT] or ["--skip-sft"]
    steps: int
    timeout_s: float
    every: int = 0

    @property
    def ckpt_steps(self) -> list[int]:
        return [s for s in range(1, self.steps + 1) if (self.every and s % self.every == 0) or s == self.steps]

    def cmd(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "polyaudio_rl.train", "--config", self.config, "--quiet", "--run-dir",
                str(run_dir), *self.start, *self.overrides]

    def resume_cmd(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "polyaudio_rl.train", "--resume", str(run_dir), "--quiet"]


def run_reference(setup: Setup, commit: str, reuse: bool = False) -> tuple[Profile, dict[str, Any]]:
    """The undisturbed run: its profile (when each phase happened) and what the trials must match. ``reuse``: the
    one an earlier invocation ran into OUT/reference with the same command (``reference.json``), when there is one."""
    run_dir = setup.out / "reference"
    saved = run_dir / "reference.json"
    cmd = _portable(setup.cmd(run_dir))
    if reuse and saved.is_file():
        rec = json.loads(saved.read_text())
        if _portable(["python", *rec["cmd"]]) != cmd:
            raise SystemExit(f"--reuse-reference: {saved} was run as {rec['cmd']}, not {cmd}; drop the flag")
        seg = Segment(**{**rec["segment"], "events": [tuple(e) for e in rec["segment"]["events"]]})
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        seg = run_segment(setup.cmd(run_dir), run_dir, run_dir / "train.log", setup.timeout_s)
        if seg.rc != 0:
            raise SystemExit(f"the reference run failed (rc {seg.rc}): {seg.error}; see {run_dir / 'train.log'}")
        rec = {"cmd": cmd, "commit": commit, "segment": asdict(seg)}
    ref = {"adapter": adapter(run_dir, setup.steps), "ids": _summary(run_dir).get("trained_ids", []),
           "wall_s": seg.wall_s, "segment": seg, "commit": rec["commit"], "reused": saved.is_file() and reuse}
    if not ref["adapter"] or not ref["ids"]:
        raise SystemExit(f"the reference run left no final adapter or trained ids in {run_dir}")
    saved.write_text(json.dumps(rec, indent=1, default=str))
    return Profile.of(seg.events, timeline_spans(run_dir)), ref


def _portable(cmd: list[str]) -> list[str]:
    """A run's command without what does not change the run: the interpreter's path and the run directory (another
    invocation's OUT may reuse the reference through a link)."""
    return [("RUN_DIR" if prev == "--run-dir" else c) for prev, c in zip(cmd, cmd[1:])]


def run_trial(setup: Setup, run_dir: Path, plan: list[Action], profile: Profile
                 ) -> tuple[list[Segment], list[dict[str, Any]]]:
    """The trial's run with its plan carried out; after a SIGTERM that stopped it cleanly, ``--resume``. Returns
    its processes and each one's summary (``summary.first.json`` / ``timeline.first.json``: the first's)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    first = run_segment(setup.cmd(run_dir), run_dir, run_dir / "train.log", setup.timeout_s, plan, profile)
    segs, sums = [first], [_summary(run_dir)]
    for name in ("summary.json", "timeline.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, run_dir / name.replace(".json", ".first.json"))
    stopped = any(a["fired"] and a.get("kind") == "driver" for a in first.actions)
    if stopped and first.rc == 0 and "preempted" in sums[0]:
        segs.append(run_segment(setup.resume_cmd(run_dir), run_dir, run_dir / "train.log", setup.timeout_s))
        sums.append(_summary(run_dir))
    return segs, sums


def sft_adapter(out: Path, config: str, overrides: list[str], timeout_s: float) -> str:
    """LoRA SFT of the configuration into OUT/sft, once (an existing final checkpoint there is reused)."""
    ckpts = sorted((out / "sft" / "checkpoints").glob("step-*"))
    if not ckpts:
        print(f"  SFT once into {out / 'sft'} ...", flush=True)
        (out / "sft").mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "polyaudio_rl.sft", "--config", config, f"run_dir={out / 'sft'}", *overrides]
        log = out / "sft" / "sft.log"
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **ENV), stdout=fh,
                                 stderr=subprocess.STDOUT, timeout=timeout_s)
        ckpts = sorted((out / "sft" / "checkpoints").glob("step-*"))
        if rc != 0 or not ckpts:
            raise SystemExit(f"SFT failed (rc {rc}); see {log}")
    return str(ckpts[-1])


def make_setup(a: argparse.Namespace) -> Setup:
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"grpo.steps={a.steps}", f"learner.checkpoint_every={a.checkpoint_every}",
                 f"grpo.max_policy_lag={a.lag}", "eval.serve_bench=false", f"eval.max_items={a.eval_items}",
                 "wandb_mode=disabled", *(["grpo.is_correction=none"] if a.lag == 0 else []), *a.set]
    if a.skip_sft:
        start = ["--skip-sft"]
    else:
        start = ["--init-adapter", a.init_adapter or sft_adapter(out, a.config, a.set, a.timeout)]
    return Setup(out, a.config, overrides, start, a.steps, a.timeout, a.checkpoint_every)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="seeds every trial's plan (trial i: seed*1000+i)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "chaos"))
    ap.add_argument("--lag", type=int, default=0, choices=(0, 1), help="grpo.max_policy_lag of every run")
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps per run")
    ap.add_argument("--checkpoint-every", type=int, default=2)
    ap.add_argument("--eval-items", type=int, default=8,
                    help="eval.max_items, >= 1 (the held-out evaluations; the one before GRPO anchors step 1)")
    ap.add_argument("--init-adapter", default=None, help="an SFT checkpoint to start GRPO from (default: SFT once)")
    ap.add_argument("--skip-sft", action="store_true", help="start GRPO from the base model (no SFT at all)")
    ap.add_argument("--set", action="append", default=[], help="a config override for every run (repeatable)")
    ap.add_argument("--only", default="", help="run only these trials (1-based, comma-separated): a reproduction, "
                    "or one part of a long invocation (OUT/chaos.json keeps the other parts' trials of the same plan)")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="reuse the undisturbed reference an earlier invocation ran into OUT/reference with the same "
                    "command (its reference.json), instead of running it again")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process before it is killed")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every trial is ok (CI)")
    ap.add_argument("--report-only", action="store_true", help="rebuild OUT's report from its chaos.json")
    return ap.parse_args(argv)


def _stop(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    old = signal.signal(signal.SIGTERM, _stop)  # `timeout` and job stops end the run in flight too
    try:
        return run(a)
    finally:
        signal.signal(signal.SIGTERM, old)


def run(a: argparse.Namespace) -> int:
    """Reference, then the trials; the report."""
    if a.report_only:
        return report_only(Path(a.out))
    if a.eval_items < 1:
        raise SystemExit("--eval-items must be >= 1 (eval.max_items 0 means the default, 32)")
    setup = make_setup(a)
    commit = git_commit()  # the code every run of this invocation runs
    all_plans = plans(a.seed, a.trials, a.steps, a.checkpoint_every)
    chosen = [int(x) - 1 for x in a.only.split(",") if x] or list(range(a.trials))
    print(f"chaos: {len(chosen)} trial(s), seed {a.seed}, lag {a.lag}, {a.steps} GRPO steps, checkpoint every "
          f"{a.checkpoint_every}; {a.config} {' '.join(setup.start)}", flush=True)
    profile, ref = run_reference(setup, commit, reuse=a.reuse_reference)
    ref["timeline"] = [asdict(ref.pop("segment"))]
    print(f"  reference: {a.steps} steps in {ref['wall_s']:.0f} s ({setup.out / 'reference'}"
          + (f", reused: run on {ref['commit']})" if ref["reused"] else ")"), flush=True)
    report = {"seed": a.seed, "lag": a.lag, "steps": a.steps, "checkpoint_every": a.checkpoint_every,
              "config": a.config, "overrides": setup.overrides, "start": setup.start, "commit": commit,
              "reference": {"wall_s": ref["wall_s"], "timeline": ref["timeline"], "commit": ref["commit"]}}
    trials: list[dict[str, Any]] = earlier_trials(setup.out, report, chosen) if a.only else []
    report["trials"] = trials
    for i in chosen:
        run_dir = setup.out / f"trial-{i + 1:02d}"
        segs, sums = run_trial(setup, run_dir, all_plans[i], profile)
        t = trial_record(i, all_plans[i], run_dir, segs, judge(setup, ref, run_dir, segs, sums),
                         setup.ckpt_steps)
        t["commit"] = commit
        trials.append(t)
        trials.sort(key=lambda r: r["trial"])
        print("  " + progress_line(t, a.trials), flush=True)
        # the trials so far, should the invocation be stopped (--report-only reports them)
        (setup.out / "chaos.json").write_text(json.dumps({**report, "partial": True}, indent=1, default=str))
    write_report(setup.out, report)
    return 1 if a.check and not all(t["ok"] for t in trials) else 0


__all__ = ["Action", "DECODE_TITLE", "KIND_TITLES", "KIND_WEIGHTS", "PHASE_WEIGHTS", "Profile", "STREAM_PHASE",
           "STREAM_SPAN_S", "Segment", "Setup", "TOL", "Watcher", "adapter", "anchor_row", "draw_plan",
           "earlier_trials", "git_commit", "grpo_start", "in_sync", "judge", "kill_worker", "kind_of", "landed", "main",
           "make_setup", "markdown", "max_abs_diff", "plans", "plot", "progress_line", "ray_workers", "reap",
           "report_only", "run", "run_reference", "run_trial", "summary_line", "table", "timeline_spans",
           "trial_record", "write_report"]


if __name__ == "__main__":
    sys.exit(main())
