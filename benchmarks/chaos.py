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
   read/shuffle tasks). Some trials then SIGTERM the driver in a later step and run ``--resume``.
4. A trial is ok when every process of it exited 0, its final adapter equals the reference's (max abs diff <= 1e-4),
   it trained the reference's sample ids, each exactly once, and ``metrics.jsonl`` has one row per step. Where a
   kill landed is read from the trial's own ``timeline.json`` and checkpoint times: on a loaded machine a moment aimed
   at a sync may land beside it, so both the aim and the landing are recorded.

Writes OUT/chaos.json (``{"trials": [{"victims", "moments", "ok", "max_abs_diff", "recoveries", ...}]}``),
OUT/chaos.png (each trial's timeline: steps, checkpoints, kills) and OUT/chaos.md (the table for the docs); prints a
line per trial, a table and a summary line (``--report-only`` rebuilds them from chaos.json). Each run's console
output: OUT/<run>/train.log. Processes a driver leaves behind are killed and counted.
"""
from __future__ import annotations

import argparse
import json
import os
import random
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

TOL = 1e-4
KIND_TITLES = {"learner": ("ray::LearnerWorker",), "rollout": ("ray::RolloutActor",), "reward": ("ray::RewardActor",),
               # Ray Data's workers (the prompt stream's decode actors and read/shuffle tasks), not its helper actors
               "data": ("ray::MapWorker", "ray::Read", "ray::Map", "ray::SortShuffle", "ray::ListFiles",
                        "ray::FooterReader")}
KIND_WEIGHTS = {"learner": 0.3, "rollout": 0.3, "reward": 0.25, "data": 0.15}
# what a moment aims at: a checkpoint or a weight sync most often (where recovery is least rehearsed)
PHASE_WEIGHTS = {"checkpoint": 0.3, "sync": 0.3, "train": 0.1, "generate": 0.1, "score": 0.1, "any": 0.1}
# timeline (lane prefix, span name) -> phase
SPAN_PHASES = [("learner", "train", "train"), ("learner", "sync: weights + probe", "sync"), ("sync", "", "sync"),
               ("rollout/", "generate", "generate"), ("reward", "score", "score"), ("data", "", "data")]
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass
class Action:
    """One thing done to a run: ``kill`` (SIGKILL a worker of ``kind``) or ``sigterm`` (to the driver), aimed at
    ``phase`` of GRPO step ``step``, ``frac`` of the way through it; ``pick`` chooses among live victims."""
    what: str
    phase: str
    step: int
    frac: float
    kind: str = ""
    pick: float = 0.0


def draw_plan(rng: random.Random, steps: int, ckpt_steps: list[int], first: int, kind: str) -> list[Action]:
    """One trial's actions: one kill of a worker of ``kind`` (two in about a third of the trials, the second of a
    random kind in a later step), then in about a third of the trials a SIGTERM to the driver in a step after the
    last kill (followed by ``--resume``)."""
    n = 2 if rng.random() < 0.35 else 1
    acts: list[Action] = []
    lo = first
    for _ in range(n):
        if lo > steps:
            break
        step = rng.randint(lo, steps if len(acts) else max(lo, steps - 2))  # room left for a second kill
        phase = rng.choices(list(PHASE_WEIGHTS), weights=list(PHASE_WEIGHTS.values()))[0]
        if phase == "checkpoint":
            later = [s for s in ckpt_steps if s >= step]
            step = later[0] if later else step
            phase = phase if later else "sync"
        kind = kind if not acts else rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        acts.append(Action("kill", phase, step, round(rng.random(), 3), kind, round(rng.random(), 3)))
        # the next action's anchor row must come after this one's (a checkpoint's anchor is its own step's row)
        lo = step + (2 if phase == "checkpoint" else 1)
    if rng.random() < 0.35 and lo <= steps - 1:
        acts.append(Action("sigterm", "any", rng.randint(lo, steps - 1), round(rng.random(), 3)))
    return acts


# ---------------------------------------------------------------------------------------------------- watching
def _grpo_rows(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def kind_of(title: str) -> str | None:
    """The victim kind of a Ray worker process title (None: an idle worker, Ray's agents and helper actors, or not a
    Ray worker at all)."""
    for kind, prefixes in KIND_TITLES.items():
        if title.startswith(prefixes):
            return kind
    return None


def ray_workers(driver_pid: int) -> list[tuple[str, int, str, float]]:
    """(kind, pid, title, create_time) of the driver's live Ray worker processes, sorted by kind and title."""
    import psutil

    out = []
    try:
        kids = psutil.Process(driver_pid).children(recursive=True)
    except psutil.Error:
        return []
    for p in kids:
        try:
            title = " ".join(p.cmdline())
            kind = kind_of(title)
            if kind:
                out.append((kind, p.pid, title[:80], p.create_time()))
        except psutil.Error:
            pass
    return sorted(out, key=lambda w: (w[0], w[2], w[1]))


class Watcher(threading.Thread):
    """Follows a running driver from outside: when each metrics row appears (``("row", step, t)``; ``step`` 0 is the
    held-out evaluation before GRPO; a row cut by a rewind and logged again appears again), when each checkpoint is
    complete (``("ckpt", step, t)``) or being written (``"ckpt_tmp"``: its temporary directory), and every process
    the driver started (to clean up what it leaves behind)."""

    def __init__(self, run_dir: Path, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.run_dir, self.proc = run_dir, proc
        self.events: list[tuple[str, int, float]] = []
        self.seen_pids: dict[int, float] = {}
        self.kind_seen: dict[str, float] = {}  # victim kind -> when a process of it was last seen alive
        self._present = self._scan()  # what a resumed run starts with is not news
        self._cond = threading.Condition()
        self.finished = False

    def run(self) -> None:
        last_ps = 0.0
        while self.proc.poll() is None:
            self._poll_files()
            if time.time() - last_ps > 0.5:
                last_ps = time.time()
                self._poll_procs()
            time.sleep(0.02)
        self._poll_files()
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def _scan(self) -> set[tuple[str, int]]:
        present = set()
        for r in _grpo_rows(self.run_dir / "metrics.jsonl"):
            if r.get("phase") in ("grpo", "eval_before"):
                present.add(("row", int(r["step"]) if r["phase"] == "grpo" else 0))
        ckdir = self.run_dir / "grpo" / "checkpoints"
        if ckdir.is_dir():
            for p in ckdir.glob("step-*"):
                if p.name[5:].isdigit():
                    present.add(("ckpt", int(p.name[5:])))
                elif p.name[5:11].isdigit() and p.name[11:].startswith(".tmp-"):  # being written (atomic_dir)
                    present.add(("ckpt_tmp", int(p.name[5:11])))
        return present

    def _poll_files(self) -> None:
        now = time.time()
        present = self._scan()
        with self._cond:
            for ev in sorted(present - self._present, key=lambda e: e[1]):
                self.events.append((ev[0], ev[1], now))
            self._present = present
            self._cond.notify_all()

    def _poll_procs(self) -> None:
        import psutil

        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        now = time.time()
        for p in kids:
            try:
                self.seen_pids.setdefault(p.pid, p.create_time())
                kind = kind_of(" ".join(p.cmdline()))
            except psutil.Error:
                continue
            if kind:
                self.kind_seen[kind] = now

    def wait_event(self, what: str, step: int, after: float, timeout_s: float = float("inf")) -> float | None:
        """The time of the first ``(what, step)`` event after ``after``; None once the driver has exited (or after
        ``timeout_s``)."""
        deadline = time.time() + timeout_s
        with self._cond:
            while time.time() < deadline:
                for w, s, t in self.events:
                    if w == what and s == step and t > after:
                        return t
                if self.finished:
                    return None
                self._cond.wait(0.05)
        return None


# ---------------------------------------------------------------------------------------------------- phases
def timeline_spans(run_dir: Path, name: str = "timeline.json") -> list[tuple[str, float, float]]:
    """(phase, start, end) in wall-clock seconds of a run's ``timeline.json`` (empty when the driver wrote none)."""
    try:
        trace = json.loads((run_dir / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    origin = trace.get("otherData", {}).get("origin_unix_s")
    if origin is None:
        return []
    lanes = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    out = []
    for e in trace["traceEvents"]:
        if e["ph"] != "X":
            continue
        lane = lanes.get(e["tid"], "")
        for prefix, span, phase in SPAN_PHASES:
            if lane.startswith(prefix) and (not span or e["name"] == span):
                out.append((phase, origin + e["ts"] / 1e6, origin + (e["ts"] + e["dur"]) / 1e6))
                break
    return out


@dataclass
class Profile:
    """When things happened in the undisturbed reference: each step's row (0: the evaluation before GRPO), each
    checkpoint's completion, the timeline's phase spans."""
    rows: dict[int, float]
    ckpts: dict[int, float]
    spans: list[tuple[str, float, float]]
    ckpt_tmps: dict[int, float] = field(default_factory=dict)  # when each checkpoint's temporary directory appeared

    @classmethod
    def of(cls, events: list[tuple[str, int, float]], spans: list[tuple[str, float, float]]) -> "Profile":
        seen: dict[str, dict[int, float]] = {"row": {}, "ckpt": {}, "ckpt_tmp": {}}
        for what, step, t in events:
            seen[what].setdefault(step, t)
        return cls(seen["row"], seen["ckpt"], spans, seen["ckpt_tmp"])

    def delay(self, act: Action, pace: float = 1.0, from_tmp: bool = False) -> float:
        """Seconds from the action's anchor row to its moment: the reference's offset of the phase aimed at (its
        spans starting in the step, joined) plus ``frac`` of its length, the whole step for ``any``; times ``pace``
        (how much slower the trial runs than the reference did). ``from_tmp``: a checkpoint's moment counts from
        its temporary directory's appearance."""
        if act.phase == "checkpoint":  # from its temporary directory (or, not seen, its step's row) to its end
            start = self.ckpt_tmps.get(act.step, self.rows[act.step]) if from_tmp else self.rows[act.step]
            return pace * act.frac * max(self.ckpts.get(act.step, 0.0) - start, 0.0)
        a, b = self.rows.get(act.step - 1), self.rows.get(act.step)
        if a is None or b is None:
            return 0.0
        hits = [(s, e) for ph, s, e in self.spans if ph == act.phase and a < s <= b]
        if hits:
            s, e = min(h[0] for h in hits), max(h[1] for h in hits)
            return pace * ((s - a) + act.frac * (e - s))
        return pace * act.frac * (b - a)

    def ckpt_span(self, step: int) -> float:
        """Seconds from the step's row to its checkpoint's completion in the reference."""
        return max(self.ckpts.get(step, 0.0) - self.rows.get(step, 0.0), 0.0)

    def pace(self, events: list[tuple[str, int, float]], step: int) -> float:
        """The trial's last step before ``step`` over the reference's same step (1 when unknown), within [0.25, 4]:
        the machine's load drifts between runs."""
        rows: dict[int, float] = {}
        for what, s, t in events:
            if what == "row":
                rows[s] = t  # the latest: a step redone after a restart counts as it ran last
        k = step - 1
        if k - 1 not in rows or k not in rows or k - 1 not in self.rows or k not in self.rows:
            return 1.0
        ratio = (rows[k] - rows[k - 1]) / max(self.rows[k] - self.rows[k - 1], 1e-3)
        return min(max(ratio, 0.25), 4.0)


def landed(t: float, events: list[tuple[str, int, float]], spans: list[tuple[str, float, float]],
           ckpt_steps: Any = ()) -> str:
    """Where a moment fell in the run it hit: a checkpoint being written (from its step's row, which the save
    follows, to its completion; "never completed" when it did not), the phases whose spans contain it, and the step
    in flight (the step after the last row logged before it)."""
    rows = [(tr, s) for w, s, tr in events if w == "row" and tr <= t]
    last_t, last = max(rows) if rows else (0.0, 0)
    parts = []
    if last in ckpt_steps:
        done = [tc for w, k, tc in events if w == "ckpt" and k == last and tc >= last_t]
        if not done or t <= min(done):
            parts.append(f"checkpoint {last}" + ("" if done else " (never completed)"))
    parts += sorted({ph for ph, s, e in spans if s <= t <= e})
    where = "+".join(parts) if parts else "between phases"
    return where if parts and parts[0].startswith("checkpoint") else f"{where} (step {last + 1} in flight)"


# ---------------------------------------------------------------------------------------------------- acting
def _alive(pid: int, created: float) -> Any:
    import psutil

    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - created) < 1e-3 else None
    except psutil.Error:
        return None


def kill_worker(driver_pid: int, act: Action, wait_s: float = 5.0, last_seen: float | None = None
                ) -> dict[str, Any]:
    """SIGKILL one live Ray worker of the driver of kind ``act.kind`` — when none is alive but one was within the
    last ``wait_s`` (``last_seen``: e.g. an actor being restarted), waiting up to ``wait_s`` for it; otherwise, or
    then, another kind at once. ``t``: when the signal was sent (the moment that landed)."""
    recent = last_seen is not None and time.time() - last_seen < wait_s
    deadline = time.time() + (wait_s if recent else 0.0)
    workers = ray_workers(driver_pid)
    while not any(w[0] == act.kind for w in workers) and time.time() < deadline:
        time.sleep(0.1)
        workers = ray_workers(driver_pid)
    cands = [w for w in workers if w[0] == act.kind] or workers
    if not cands:
        return {"fired": False, "error": "no Ray worker alive"}
    kind, pid, title, created = cands[min(int(act.pick * len(cands)), len(cands) - 1)]
    proc = _alive(pid, created)
    if proc is None:
        return {"fired": False, "error": f"{title} (pid {pid}) exited before the kill"}
    t = time.time()
    proc.send_signal(signal.SIGKILL)
    return {"fired": True, "t": t, "kind": kind, "wanted": act.kind, "pid": pid, "title": title,
            "alive_kinds": sorted({w[0] for w in workers})}


def execute(watcher: Watcher, proc: subprocess.Popen, actions: list[Action], profile: Profile,
            out: list[dict[str, Any]]) -> None:
    """Carry out the actions in order, each at its anchor row plus the reference's delay; stops when the driver
    exits (the actions left are recorded as not fired)."""
    after = 0.0
    for act in actions:
        rec: dict[str, Any] = {"action": asdict(act), "aim": f"{act.phase} of step {act.step}", "fired": False}
        out.append(rec)
        anchor = watcher.wait_event("row", act.step if act.phase == "checkpoint" else act.step - 1, after)
        if anchor is None:
            rec["error"] = "the driver exited before the moment"
            return
        tmp = None
        if act.phase == "checkpoint":  # the save follows the row: anchor on its temporary directory when seen
            tmp = watcher.wait_event("ckpt_tmp", act.step, anchor - 0.05,
                                     timeout_s=2.0 + 2 * profile.ckpt_span(act.step))
        with watcher._cond:
            events = list(watcher.events)
        delay = profile.delay(act, profile.pace(events, act.step), from_tmp=tmp is not None)
        time.sleep(max(0.0, (tmp or anchor) + delay - time.time()))
        if proc.poll() is not None:
            rec["error"] = "the driver exited before the moment"
            return
        rec["t"] = rec["aimed_t"] = time.time()
        if act.what == "kill":  # its "t" becomes the kill's own (after a wait for the kind drawn)
            rec.update(kill_worker(proc.pid, act, last_seen=watcher.kind_seen.get(act.kind)))
        else:
            os.kill(proc.pid, signal.SIGTERM)
            rec.update({"fired": True, "kind": "driver", "pid": proc.pid, "title": "SIGTERM to the driver"})
        after = rec["t"]


def reap(seen: dict[int, float], grace_s: float = 10.0) -> int:
    """Kill what a finished driver left alive (after ``grace_s`` for its own reaper); returns how many."""
    deadline = time.time() + grace_s
    left = [p for pid, created in seen.items() if (p := _alive(pid, created)) is not None]
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = [p for pid, created in seen.items() if (p := _alive(pid, created)) is not None]
    for p in left:
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - gone in between
            pass
    return len(left)


# ---------------------------------------------------------------------------------------------------- running
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


def adapter(run_dir: Path, step: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = run_dir / "grpo" / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"
    return load_file(str(path)) if path.is_file() else {}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a or not b or a.keys() != b.keys():
        return None
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------------- trials
def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_reference(setup: Setup, commit: str, reuse: bool = False) -> tuple[Profile, dict[str, Any]]:
    """The undisturbed run: its profile (when each phase happened) and what the trials must match. ``reuse``: the
    one an earlier invocation ran into OUT/reference with the same command (``reference.json``), when there is one."""
    run_dir = setup.out / "reference"
    saved = run_dir / "reference.json"
    cmd = setup.cmd(run_dir)[1:]  # not the interpreter's path
    if reuse and saved.is_file():
        rec = json.loads(saved.read_text())
        if rec["cmd"] != cmd:
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


def judge(setup: Setup, ref: dict[str, Any], run_dir: Path, segs: list[Segment], sums: list[dict[str, Any]]
          ) -> dict[str, Any]:
    """The trial's checks against the reference: exit codes, final adapter, trained ids, one row per step."""
    from collections import Counter

    diff = max_abs_diff(ref["adapter"], adapter(run_dir, setup.steps))
    ids = [i for s in sums for i in s.get("trained_ids", [])]
    ids_ok = Counter(ids) == Counter(ref["ids"]) and len(ids) == len(set(ids))
    rows = [int(r["step"]) for r in _grpo_rows(run_dir / "metrics.jsonl") if r.get("phase") == "grpo"]
    rows_ok = rows == list(range(1, setup.steps + 1))
    rcs = [s.rc for s in segs]
    rec = {k: sum(int(s.get(k, 0) or 0) for s in sums)
           for k in ("learner_restarts", "rollout_resends", "reward_actor_replacements")}
    rec["resumes"] = len(segs) - 1
    ok = all(rc == 0 for rc in rcs) and diff is not None and diff <= TOL and ids_ok and rows_ok
    errors = [s.error for s in segs if s.error]
    if not ok and not errors:
        errors = [("adapter differs" if diff is None or diff > TOL else "")
                  + ("; trained ids differ" if not ids_ok else "") + ("; metrics rows " + str(rows) if not rows_ok
                                                                       else "")]
    return {"ok": ok, "rcs": rcs, "max_abs_diff": diff, "ids_ok": ids_ok, "n_ids": len(ids), "rows": rows,
            "rows_ok": rows_ok, "recoveries": sum(rec.values()), "recovery_counts": rec,
            "leftover_processes": sum(s.leftovers for s in segs), "errors": errors,
            "wall_s": sum(s.wall_s for s in segs)}


def grpo_start(events: list[tuple[str, int, float]], default: float) -> float:
    """When GRPO started in a run: its held-out evaluation's row (step 0)."""
    return next((t for w, s, t in events if w == "row" and s == 0), default)


def trial_record(i: int, plan: list[Action], run_dir: Path, segs: list[Segment], verdict: dict[str, Any],
                 ckpt_steps: list[int]) -> dict[str, Any]:
    """chaos.json's entry of a trial: victims and moments (aimed at, landed in) of what fired, and the verdict."""
    first = segs[0]
    spans = timeline_spans(run_dir, "timeline.first.json")
    fired = [a for a in first.actions if a["fired"]]
    victims = [f"{a['kind']}:{a['pid']}" for a in fired]
    t0 = grpo_start(first.events, first.start)
    moments = [{"aim": a["aim"], "landed": landed(a["t"], first.events, spans, ckpt_steps),
                "t_s": round(a["t"] - t0, 2), "title": a["title"]} for a in fired]
    missed = [{"aim": a["aim"], "why": a.get("error", "")} for a in first.actions if not a["fired"]]
    return {"trial": i, "plan": [asdict(a) for a in plan], "victims": victims, "moments": moments,
            "not_fired": missed, **verdict, "run_dir": str(run_dir),
            "timeline": [{"rc": s.rc, "start": s.start, "wall_s": s.wall_s, "events": s.events,
                          "actions": [{k: v for k, v in a.items() if k != "action"} for a in s.actions]}
                         for s in segs]}


# ---------------------------------------------------------------------------------------------------- set-up
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


def plans(seed: int, trials: int, steps: int, every: int) -> list[list[Action]]:
    """Each trial's plan, from its own generator seeded by (seed, trial): trial i is the same in any invocation. The
    first victims' kinds take turns in an order shuffled by the seed, so any four trials kill each kind once."""
    ckpt_steps = [s for s in range(1, steps + 1) if (every and s % every == 0) or s == steps]
    first = 2  # from step 2 on, the trial's own pace (its step 1 against the reference's) scales the moments
    kinds = random.Random(seed).sample(sorted(KIND_WEIGHTS), len(KIND_WEIGHTS))
    return [draw_plan(random.Random(seed * 1000 + i), steps, ckpt_steps, first, kinds[i % len(kinds)])
            for i in range(trials)]


# ---------------------------------------------------------------------------------------------------- report
def progress_line(t: dict[str, Any], n: int) -> str:
    kills = "; ".join(f"{v} aimed at {m['aim']}, landed in {m['landed']}" for v, m in zip(t["victims"], t["moments"]))
    diff = "n/a" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
    verdict = "ok" if t["ok"] else "FAILED: " + " | ".join(t["errors"])[:300]
    return (f"trial {t['trial'] + 1}/{n}: {kills or 'nothing fired'} -> rc {t['rcs']}, diff {diff}, ids "
            f"{'ok' if t['ids_ok'] else 'WRONG'}, rows {'ok' if t['rows_ok'] else t['rows']}, recoveries "
            f"{t['recoveries']}, {t['wall_s']:.0f} s: {verdict}")


def table(trials: list[dict[str, Any]]) -> str:
    head = f"{'#':>2}  {'ok':<4} {'victims':<28} {'moments (aimed -> landed)':<70} {'diff':>8}  {'rec':>3}  rc"
    lines = [head, "-" * len(head)]
    for t in trials:
        ms = [f"{m['aim']} -> {m['landed']}" for m in t["moments"]]
        diff = "n/a" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
        for j in range(max(1, len(ms))):
            first = j == 0
            lines.append(f"{t['trial'] + 1 if first else '':>2}  {('yes' if t['ok'] else 'NO') if first else '':<4} "
                         f"{(t['victims'][j] if j < len(t['victims']) else ''):<28} {(ms[j] if ms else '-')[:70]:<70} "
                         f"{diff if first else '':>8}  {t['recoveries'] if first else '':>3}  "
                         f"{t['rcs'] if first else ''}")
    return "\n".join(lines)


def summary_line(trials: list[dict[str, Any]], lag: int, seed: int) -> str:
    from collections import Counter

    kinds = Counter(v.split(":")[0] for t in trials for v in t["victims"])
    hot = sum(1 for t in trials for m in t["moments"] if "checkpoint" in m["landed"] or "sync" in m["landed"])
    return (f"chaos: {sum(t['ok'] for t in trials)}/{len(trials)} trials ok (lag {lag}, seed {seed}); victims "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            + f"; {hot} kill(s) landed in a checkpoint or a sync")


def markdown(report: dict[str, Any], commit: str) -> str:
    """The result as a Markdown table for docs/reliability.md: one row per trial, with date and commit."""
    head = (f"`--trials {len(report['trials'])} --seed {report['seed']} --lag {report['lag']}`, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}: **{report['summary']}**\n\n"
            "| trial | ok | victims | moments (aimed at → landed in) | max abs diff | recoveries | error |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for t in report["trials"]:
        acts = [a for a in t["timeline"][0]["actions"] if a.get("fired")]
        vic = ", ".join(("SIGTERM driver" if a["kind"] == "driver" else f"{a['kind']} (pid {a['pid']})") for a in acts)
        mom = "; ".join(f"{m['aim']} → {m['landed']} ({m['t_s']:.1f} s into GRPO)" for m in t["moments"])
        diff = "–" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
        err = " / ".join(e.replace("|", "\\|")[:160] for e in t["errors"])
        rows.append(f"| {t['trial'] + 1} | {'yes' if t['ok'] else '**no**'} | {vic} | {mom} | {diff} | "
                    f"{t['recoveries']} | {err} |")
    return head + "\n".join(rows) + "\n"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COLORS = {"learner": "#d62728", "rollout": "#1f77b4", "reward": "#2ca02c", "data": "#9467bd", "driver": "#000000"}


def _plot_segments(ax: Any, y: float, segs: list[dict[str, Any]], moments: list[dict[str, Any]]) -> float:
    """One trial's row, 0 = its first process's held-out evaluation row (GRPO starts): each process as a bar, step
    rows as ticks, checkpoints as triangles, kills and SIGTERMs as markers labelled with where they landed. Returns
    the row's last time."""
    first = segs[0]
    t0 = grpo_start(first["events"], first["start"])
    labels = iter(m["landed"] for m in moments)
    for seg in segs:
        ax.barh(y, seg["wall_s"], left=seg["start"] - t0, height=0.5, color="#eeeeee", edgecolor="#999999")
        for what, step, t in seg["events"]:
            if what == "row" and step > 0:
                ax.plot([t - t0] * 2, [y - 0.25, y + 0.25], color="#999999", lw=0.8)
            elif what == "ckpt":
                ax.plot(t - t0, y + 0.3, marker="v", color="#555555", ms=4)
        for a in seg["actions"]:
            if a.get("fired"):
                ax.plot(a["t"] - t0, y, marker="x" if a["kind"] == "driver" else "o", ms=9, color=COLORS[a["kind"]],
                        mec="black")
                ax.annotate(next(labels, "").split(" (")[0], (a["t"] - t0, y - 0.3), fontsize=7, ha="center",
                            va="top")
    return segs[-1]["start"] + segs[-1]["wall_s"] - t0


def plot(trials: list[dict[str, Any]], ref: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.6 * (len(trials) + 1)))
    rows = [("reference", ref["timeline"], [])] + [
        (f"trial {t['trial'] + 1} {'ok' if t['ok'] else 'FAILED'}", t["timeline"], t["moments"]) for t in trials]
    end = max(_plot_segments(ax, -y, segs, ms) for y, (_, segs, ms) in enumerate(rows))
    ax.set_xlim(-5, end + 2)
    ax.set_ylim(-len(rows) + 0.3, 0.7)
    ax.set_yticks([-y for y in range(len(rows))], [r[0] for r in rows])
    for lab in ax.get_yticklabels():
        lab.set_color("#b00000" if "FAILED" in lab.get_text() else "black")
    ax.set_xlabel("s since GRPO started (the held-out evaluation's row); ticks: step rows; triangles: checkpoints; "
                  "bars: the run, its --resume")
    handles = [Line2D([], [], marker="x" if k == "driver" else "o", ls="", color=c, mec="black",
                      label="SIGTERM driver" if k == "driver" else f"SIGKILL {k}") for k, c in COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
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


def earlier_trials(out: Path, report: dict[str, Any], chosen: list[int]) -> list[dict[str, Any]]:
    """The trials an earlier ``--only`` invocation of the same plan (seed, lag, steps, command) wrote to
    OUT/chaos.json and this one does not run again: one report for an invocation split into parts."""
    try:
        old = json.loads((out / "chaos.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    same = ("seed", "lag", "steps", "checkpoint_every", "config", "overrides", "start")
    if any(old.get(k) != report[k] for k in same):
        return []
    return [{"commit": old.get("commit", "unknown"), **t} for t in old["trials"] if t["trial"] not in chosen]


def write_report(out: Path, report: dict[str, Any]) -> None:
    """chaos.json, chaos.md, chaos.png; the table and the summary line on the console."""
    stopped = report.pop("partial", False)
    report["summary"] = summary_line(report["trials"], report["lag"], report["seed"]) + (
        " (the invocation was stopped before its other trials)" if stopped else "")
    (out / "chaos.json").write_text(json.dumps(report, indent=1, default=str))
    commits = sorted({t.get("commit", report.get("commit", "unknown")) for t in report["trials"]})
    (out / "chaos.md").write_text(markdown(report, ", ".join(commits) or report.get("commit", "unknown")))
    plot(report["trials"], report["reference"], out / "chaos.png", report["summary"])
    print(table(report["trials"]))
    print(report["summary"])
    print(f"  {out / 'chaos.json'}, {out / 'chaos.png'}, {out / 'chaos.md'}")


def report_only(out: Path) -> int:
    """Rebuild the report of a finished invocation from its chaos.json and its trials' timelines (where each
    moment landed is derived data)."""
    report = json.loads((out / "chaos.json").read_text())
    every, steps = report["checkpoint_every"], report["steps"]
    ckpt_steps = [s for s in range(1, steps + 1) if (every and s % every == 0) or s == steps]
    for t in report["trials"]:
        first = t["timeline"][0]
        spans = timeline_spans(Path(t["run_dir"]), "timeline.first.json")
        events = [tuple(e) for e in first["events"]]
        fired = [a for a in first["actions"] if a.get("fired")]
        for m, a in zip(t["moments"], fired):
            m["landed"] = landed(a["t"], events, spans, ckpt_steps)
            m["t_s"] = round(a["t"] - grpo_start(events, first["start"]), 2)
    write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
