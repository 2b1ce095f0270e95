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

Used by the Serve replicas of :mod:`eval.serve` (the vLLM engine under each ``LLMServer`` replica) and meant for any
owner of engine processes (rollout actors).
"""
from __future__ import annotations

import functools
import multiprocessing.process
import os
import signal
import threading
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
