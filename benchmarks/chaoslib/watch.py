"""Watching a running driver from outside: its metrics rows, checkpoints (complete and being written) and the
processes it started, as timed events."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .moments import DECODE_TITLE, Action, anchor_row, in_sync
from .victims import kind_of


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
        # (victim kind, or "decode": the prompt stream's decode actor; when), each poll that saw one of it alive
        self.sightings: list[tuple[str, float]] = []
        self.sync_pids: list[int] = []  # the learner workers and rollout actors alive at the last poll
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
        alive = set()
        sync_pids = []
        for p in kids:
            try:
                self.seen_pids.setdefault(p.pid, p.create_time())
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            kind = kind_of(title)
            if kind:
                alive.add(kind)
            if kind in ("learner", "rollout"):
                sync_pids.append(p.pid)
            if title.startswith(DECODE_TITLE) and ".__init__" not in title:
                alive.add("decode")  # the stream's decode actor, started (a Ray Data worker, kind "data", too)
        self.sync_pids = sync_pids
        with self._cond:
            for kind in sorted(alive):
                self.kind_seen[kind] = now
                self.sightings.append((kind, now))
            self._cond.notify_all()

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

    def wait_anchor(self, act: Action, after: float, ckpt_steps: Any = ()) -> tuple[Action, float] | None:
        """The action as it will be carried out and its anchor row's time (:func:`~.moments.anchor_row`: moved to
        the step in flight when the run went past its anchor row before ``after``); None once the driver has
        exited."""
        with self._cond:
            while True:
                got = anchor_row(act, self.events, after, ckpt_steps)
                if got is not None:
                    return got
                if self.finished:
                    return None
                self._cond.wait(0.05)

    def wait_kind(self, kind: str, after: float) -> float | None:
        """When a worker of ``kind`` was first seen alive after ``after``; None once the driver has exited."""
        with self._cond:
            while True:
                seen = [t for k, t in self.sightings if k == kind and t > after]
                if seen:
                    return seen[0]
                if self.finished:
                    return None
                self._cond.wait(0.05)

    def wait_sync(self, after: float, row: int, poll_s: float = 0.01) -> float | None:
        """When a learner worker or rollout actor of the driver was first seen running a weight-sync method
        (:func:`~.moments.in_sync`), reading only those workers' titles (``/proc/PID/cmdline``; the pids of the last
        process scan) every ``poll_s`` from now: a sync lasts ~0.1 s, a scan of all the driver's processes about as
        long on a loaded machine. None when the metrics row ``row`` appeared after ``after`` first (the step ended
        without a sync seen) or the driver exited."""
        while self.proc.poll() is None:
            with self._cond:
                if any(w == "row" and s == row and t > after for w, s, t in self.events):
                    return None
            for pid in list(self.sync_pids):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:  # exited since the scan
                    continue
                if in_sync(title):
                    return time.time()
            time.sleep(poll_s)
        return None
