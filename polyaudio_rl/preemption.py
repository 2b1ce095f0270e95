"""Preemption-safe stopping: SIGTERM or SIGINT asks a run to stop at the next step boundary.

    with StopRequest() as stop:
        for step in ...:
            train one step
            if stop.requested:
                checkpoint; print the --resume command; break      # exit 0

The first signal is noted (the step in flight finishes: an optimizer step is never cut in half); a second one of
either kind aborts at once (KeyboardInterrupt). Handlers are installed only in the main thread (elsewhere signals
cannot be caught) and restored on exit. A preempted node, a cancelled ``ray job stop`` (SIGTERM to the entrypoint,
SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S`` — 3 s by default, read where ``ray start --head`` ran: set it above one GRPO
step) and Ctrl-C all end the same way.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopRequest:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt(f"second signal ({name}): aborting now")
        self.signal = name
        print(f"\n[train] {name}: stopping after the step in flight (checkpoint, then exit 0); "
              "send it again to abort now", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


__all__ = ["StopRequest"]
