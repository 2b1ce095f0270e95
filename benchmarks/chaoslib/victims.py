"""Victims of the chaos harness: the driver's live Ray worker processes by kind (process title), one SIGKILLed at a
moment, and what a finished driver left behind."""
from __future__ import annotations

import signal
import time
from typing import Any

from .moments import Action

KIND_TITLES = {"learner": ("ray::LearnerWorker",), "rollout": ("ray::RolloutActor",), "reward": ("ray::RewardActor",),
               # Ray Data's workers (the prompt stream's decode actors and read/shuffle tasks), not its helper actors
               "data": ("ray::MapWorker", "ray::Read", "ray::Map", "ray::SortShuffle", "ray::ListFiles",
                        "ray::FooterReader")}


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


def _alive(pid: int, created: float) -> Any:
    import psutil

    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - created) < 1e-3 else None
    except psutil.Error:
        return None


def kill_worker(driver_pid: int, act: Action, wait_s: float = 5.0, last_seen: float | None = None,
                prefer: tuple[str, ...] = ()) -> dict[str, Any]:
    """SIGKILL one live Ray worker of the driver of kind ``act.kind`` (one whose title starts with ``prefer`` when
    one is alive) — when none is alive but one was within the last ``wait_s`` (``last_seen``: e.g. an actor being
    restarted), waiting up to ``wait_s`` for it; otherwise, or then, another kind at once. ``t``: when the signal
    was sent (the moment that landed)."""
    recent = last_seen is not None and time.time() - last_seen < wait_s
    deadline = time.time() + (wait_s if recent else 0.0)
    workers = ray_workers(driver_pid)
    while not any(w[0] == act.kind for w in workers) and time.time() < deadline:
        time.sleep(0.1)
        workers = ray_workers(driver_pid)
    cands = [w for w in workers if w[0] == act.kind] or workers
    cands = [w for w in cands if prefer and w[2].startswith(prefer)] or cands
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
