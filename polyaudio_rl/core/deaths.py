"""A process died: one classification of Ray's exceptions, used at every call site of the GRPO driver.

    with dies_as("learner worker", "checkpoint"):
        learner.save_checkpoint(...)          # a dead worker surfaces as WorkerDied("learner worker", "checkpoint")

Ray reports a dead process under many names, depending on where the call stood when it died: ``ActorDiedError``
(the actor is gone), ``ActorUnavailableError`` (it is restarting), ``RayActorError`` (their base), ``WorkerCrashedError``
(a task's worker), ``OutOfMemoryError`` (Ray's memory monitor killed it), ``ObjectLostError`` and its subclasses
(``OwnerDiedError``: a result whose owner or every copy died), ``NodeDiedError`` / ``LocalRayletDiedError`` (the
node), ``ActorPlacementGroupRemoved``. :func:`death_cause` finds one of them by type — in the exception itself, in its
``__cause__`` / ``__context__`` chain, or as the ``cause`` of a ``RayTaskError`` (a remote call that raised because a
process it waited on died) — never by the wording of a message. :class:`WorkerDied` says what died (the caller's
name, or the actor the driver recognises by its id), during which phase, and keeps the Ray exception as its cause.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_DEATH_NAMES = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError", "NodeDiedError",
                "LocalRayletDiedError", "ActorPlacementGroupRemoved")


def death_types() -> tuple[type[BaseException], ...]:
    """The Ray exception types that mean "a process died" (their subclasses included)."""
    import ray.exceptions as rex

    return tuple(getattr(rex, n) for n in _DEATH_NAMES if hasattr(rex, n))


def death_cause(exc: BaseException | None) -> BaseException | None:
    """The exception in ``exc``'s chain (itself, ``__cause__``, ``__context__``, a RayTaskError's ``cause``) that
    says a process died, or None when none does. A :class:`WorkerDied` returns its own cause."""
    types = death_types()
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, WorkerDied):
            return e.cause
        if isinstance(e, types):
            return e
        inner = getattr(e, "cause", None)  # RayTaskError: what the remote call raised
        todo += [e.__cause__, e.__context__, inner if isinstance(inner, BaseException) else None]
    return None


def actor_id_of(exc: BaseException | None) -> str | None:
    """The hex id of the actor a death names (``RayActorError.actor_id``), or None."""
    try:
        return getattr(exc, "actor_id", None) or None
    except Exception:  # noqa: BLE001 - a property that cannot be read names nothing
        return None


class WorkerDied(RuntimeError):
    """``what`` (e.g. "learner worker 0", "rollout actor 1", "reward actor") died during ``phase`` (e.g.
    "checkpoint", "weight sync"); ``cause`` is Ray's exception. The driver rebuilds from the newest valid checkpoint."""

    def __init__(self, what: str, phase: str, cause: BaseException):
        self.what, self.phase, self.cause = what, phase, cause
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        super().__init__(f"{what} died during {phase} ({type(cause).__name__}: {first})")

    def named(self, what: str | None) -> "WorkerDied":
        """The same death under a more precise name (when the driver recognises the actor), else itself."""
        if not what or what == self.what:
            return self
        out = WorkerDied(what, self.phase, self.cause)
        out.__cause__ = self.__cause__
        return out


@contextmanager
def dies_as(what: str, phase: str) -> Iterator[None]:
    """Turn an exception whose chain says a process died into :class:`WorkerDied` (``what``, ``phase``); other
    exceptions, and a WorkerDied raised inside (it already names its phase), pass unchanged."""
    try:
        yield
    except WorkerDied:
        raise
    except Exception as exc:
        cause = death_cause(exc)
        if cause is None:
            raise
        raise WorkerDied(what, phase, cause) from exc


def give_up_message(death: WorkerDied, step: int, restarts: int, max_restarts: int, checkpoint: str | None,
                    run: str) -> str:
    """What the console says when a death comes after ``learner.max_restarts`` recoveries: what died, where, the
    newest valid checkpoint, and the exact command that continues the run."""
    return (f"{death.what} died during {death.phase} at GRPO step {step} ({type(death.cause).__name__}), after "
            f"{restarts} recover{'y' if restarts == 1 else 'ies'} (learner.max_restarts={max_restarts}); the newest "
            f"valid checkpoint is {checkpoint or 'none (the run starts over)'}. Continue with:\n"
            f"    python -m polyaudio_rl.train --resume {run}")


class RunAborted(RuntimeError):
    """A death the run does not recover from (past ``learner.max_restarts``); the message says what to do."""


__all__ = ["RunAborted", "WorkerDied", "actor_id_of", "death_cause", "death_types", "dies_as", "give_up_message"]
