"""core.deaths: "a process died" is decided by exception type anywhere in the chain, never by wording."""
from __future__ import annotations

import pytest
import ray.exceptions as rex

from polyaudio_rl.core.deaths import RunAborted, WorkerDied, death_cause, dies_as, give_up_message


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


def _task_error(inner: BaseException) -> BaseException:
    """A RayTaskError as Ray builds it: a remote call raised ``inner``."""
    return rex.RayTaskError("fn", "traceback text", inner)


DEATHS = [
    ("actor died", rex.ActorDiedError()),
    ("actor unavailable (restarting)", rex.ActorUnavailableError("restarting", b"\x00" * 16)),
    ("actor error base", rex.RayActorError()),
    ("worker crashed", rex.WorkerCrashedError()),
    ("Ray's OOM killer", rex.OutOfMemoryError("killed")),
    ("object lost", rex.ObjectLostError("ab" * 14, None, "")),
    ("owner died", rex.OwnerDiedError("ab" * 14, None, "")),
    ("node died", rex.NodeDiedError("node")),
    ("raylet died", rex.LocalRayletDiedError()),
]


@pytest.mark.parametrize("name,exc", DEATHS, ids=[d[0] for d in DEATHS])
def test_every_kind_of_death_is_one(name, exc):
    assert death_cause(exc) is exc
    wrapped = _chained(RuntimeError("sync of policy version 3 failed"), exc)  # a pool's own error, raised from it
    assert death_cause(wrapped) is exc
    assert death_cause(_task_error(exc)) is not None  # a remote call that raised because what it waited on died


NOT_DEATHS = [
    ("an error whose message says died", RuntimeError("the actor died: ActorDiedError")),
    ("a task timed out", rex.GetTimeoutError("timeout")),
    ("a task that raised", _task_error(ValueError("bad shape"))),
    ("a cancelled task", rex.TaskCancelledError()),
    ("a plain KeyError", KeyError("x")),
]


@pytest.mark.parametrize("name,exc", NOT_DEATHS, ids=[d[0] for d in NOT_DEATHS])
def test_other_errors_are_not_deaths(name, exc):
    assert death_cause(exc) is None


def test_dies_as_names_what_and_where_and_keeps_other_errors():
    with pytest.raises(WorkerDied) as got:
        with dies_as("learner worker", "checkpoint"):
            raise rex.ActorDiedError()
    assert (got.value.what, got.value.phase) == ("learner worker", "checkpoint")
    assert isinstance(got.value.cause, rex.ActorDiedError)
    assert str(got.value).startswith("learner worker died during checkpoint (ActorDiedError: ")
    with pytest.raises(WorkerDied) as again:  # an inner site already named it: kept
        with dies_as("rollout actor", "rollout"):
            with dies_as("learner worker", "prefetch"):
                raise rex.WorkerCrashedError()
    assert (again.value.what, again.value.phase) == ("learner worker", "prefetch")
    with pytest.raises(ValueError):
        with dies_as("learner worker", "train step"):
            raise ValueError("not a death")
    assert death_cause(got.value) is got.value.cause
    assert got.value.named("learner worker 0").what == "learner worker 0"


def test_give_up_message_says_what_where_and_how_to_continue():
    death = WorkerDied("learner worker 0", "weight sync", rex.ActorDiedError())
    msg = give_up_message(death, 3, 2, 2, "/r/grpo/checkpoints/step-000002", "file:///runs/a")
    assert msg == ("learner worker 0 died during weight sync at GRPO step 3 (ActorDiedError), after 2 recoveries "
                   "(learner.max_restarts=2); the newest valid checkpoint is /r/grpo/checkpoints/step-000002. "
                   "Continue with:\n    python -m polyaudio_rl.train --resume file:///runs/a")
    assert "none (the run starts over)" in give_up_message(death, 1, 1, 1, None, "runs/a")
    assert "after 1 recovery " in give_up_message(death, 1, 1, 1, None, "runs/a")
    assert issubclass(RunAborted, RuntimeError)
