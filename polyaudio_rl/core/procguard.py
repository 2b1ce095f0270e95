"""Processes that end with their owner, however the owner dies (SIGKILL included).

A process whose parent is SIGKILLed is re-parented (to init or a subreaper) and lives on: a vLLM ``EngineCore`` and
its workers keep their memory (and a GPU's) for good. Two pieces stop that:

- :func:`die_with_parent` — in the calling process, a daemon thread that polls ``os.getppid()`` and SIGKILLs the
  process when the parent it was started under is gone (re-parenting changes the answer). A thread and not
  ``prctl(PR_SET_PDEATHSIG)``: the kernel fires that when the parent *thread* that forked the child exits, and vLLM
  and Ray start engines from threads that may end while the process lives on. On Linux, where the parent already
  died before the watch started, the process ends at once.
- :func:`guard_children` — from now on every ``multiprocessing`` child this process starts (``spawn``, ``fork`` or
  ``forkserver``; vLLM starts its EngineCore and worker processes that way) first calls :func:`die_with_parent` and
  :func:`guard_children` itself, then runs its target: the whole tree below a guarded process is guarded.

- :func:`start_reaper` — a small separate process (its own session) that records the owner's process tree every
  second and, once the owner is gone (SIGKILL included), SIGKILLs every recorded process still alive (pid and start
  time matched, so a reused pid is never hit): what neither the guard nor Ray's fate-sharing reaches (Ray's
  dashboard agent, idle workers) goes too.

Used by the Serve replicas of :mod:`eval.serve` (the vLLM engine under each ``LLMServer`` replica) and meant for any
owner of engine processes (rollout actors).
"""
from __future__ import annotations

import functools
import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

POLL_S = 0.5
_watching: list[int] = []  # the parent pid being watched in this process (one watch per process)


def _watch(parent: int, poll_s: float) -> None:
    event = threading.Event()
    while not event.wait(poll_s):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(poll_s: float = POLL_S) -> bool:
    """SIGKILL this process within ``poll_s`` seconds of its parent's death; False when there is nothing to watch
    (already watching, or the parent is init: a daemon started on purpose)."""
    parent = os.getppid()
    if _watching or parent <= 1:
        return False
    _watching.append(parent)
    threading.Thread(target=_watch, args=(parent, poll_s), name="die-with-parent", daemon=True).start()
    return True


def _guarded_run(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A child's target under the guard (module level, so that ``spawn`` can pickle it)."""
    die_with_parent()
    guard_children()
    return target(*args, **kwargs)


def guard_children() -> bool:
    """Wrap the target of every ``multiprocessing`` process started from now on in this process; idempotent."""
    base = multiprocessing.process.BaseProcess
    if getattr(base.start, "_polyaudio_guard", False):
        return False
    original = base.start

    @functools.wraps(original)
    def start(self: Any) -> None:
        target = getattr(self, "_target", None)
        if target is not None and not (isinstance(target, functools.partial) and target.func is _guarded_run):
            self._target = functools.partial(_guarded_run, target)
        return original(self)

    start._polyaudio_guard = True  # type: ignore[attr-defined]
    base.start = start  # type: ignore[method-assign]
    return True


def guard_process_tree() -> None:
    """Both: this process dies with its parent, and so does every ``multiprocessing`` child it starts."""
    die_with_parent()
    guard_children()


def _kill_recorded(known: dict[int, float]) -> list[int]:
    import psutil

    killed = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3:
                p.kill()
                killed.append(pid)
        except psutil.Error:
            pass
    return killed


def reap_when_gone(owner_pid: int, poll_s: float = 1.0) -> list[int]:
    """Record ``owner_pid``'s descendants every ``poll_s``; when it is gone, SIGKILL those still alive."""
    import psutil

    me, known = os.getpid(), {}
    try:
        owner = psutil.Process(owner_pid)
        while owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE:
            for p in owner.children(recursive=True):
                try:
                    if p.pid != me:
                        known[p.pid] = p.create_time()
                except psutil.Error:
                    pass
            time.sleep(poll_s)
    except psutil.Error:
        pass
    return _kill_recorded(known)


def start_reaper(owner_pid: int | None = None) -> subprocess.Popen | None:
    """Start the reaper of this process's tree (None when psutil is missing)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return None
    return subprocess.Popen([sys.executable, "-m", "polyaudio_rl.core.procguard", str(owner_pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 os.environ.get("PYTHONPATH", "")])})


if __name__ == "__main__":  # python -m polyaudio_rl.core.procguard OWNER_PID
    reap_when_gone(int(sys.argv[1]))
