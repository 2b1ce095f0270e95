"""The run's policy version: one counter object that the driver and the rollout pool share.

Two facts live in it, both read from here and nowhere else: ``trained`` — the learner's policy, bumped by the driver
when it sends a weight sync — and ``served`` — the policy the rollout actors serve, set by the rollout pool when the
sync reaches them (a rollout job and its shards record the version they were sent at, as data, not as a counter).
Waiting for a version (the pipelined driver's gate) blocks on a condition instead of polling.
"""
from __future__ import annotations

import threading
from typing import Callable


class PolicyVersion:
    def __init__(self, trained: int = 0, served: int = 0):
        self._cv = threading.Condition()
        self.trained = trained
        self.served = served

    def bump(self) -> int:
        """The next learner policy (a sync is being sent); returns its version."""
        with self._cv:
            self.trained += 1
            return self.trained

    def serve(self, version: int) -> None:
        """The rollout actors serve ``version`` from now on; wakes every waiter."""
        with self._cv:
            self.served = version
            self._cv.notify_all()

    def wake(self) -> None:
        """Wake every waiter to re-check its stop condition."""
        with self._cv:
            self._cv.notify_all()

    def wait_served(self, version: int, stop: Callable[[], bool] = lambda: False,
                    timeout: float | None = None) -> bool:
        """Block until ``version`` (or newer) is served; False when ``stop()`` turned true (after a :meth:`wake`)
        or ``timeout`` passed first."""
        with self._cv:
            self._cv.wait_for(lambda: self.served >= version or stop(), timeout)
            return self.served >= version
