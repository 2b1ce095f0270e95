"""Session fixtures of the end-to-end runs in this directory: the judge server, and the undisturbed reference run
that the exact-resume tests compare against (test_chaos.py, test_resume.py), made once
(tests/polyaudio_rl/reference_run.py: its settings)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.polyaudio_rl.reference_run import TINY_CPU, judge_helper, reference_overrides, write_foreign_adapter


@pytest.fixture(scope="session")
def judge():
    """The judge server of the judge-scored runs (in this process; it keeps no state between requests)."""
    with judge_helper().running_judge() as j:
        yield j


@pytest.fixture(scope="session")
def foreign_adapter(tiny_ckpt, tmp_path_factory) -> Path:
    """The reference's initial adapter. Read only: a test that changes an init adapter changes its own copy."""
    return write_foreign_adapter(tiny_ckpt, TINY_CPU, tmp_path_factory.mktemp("adapters") / "seed3")


@pytest.fixture(scope="session")
def calm(tiny_ckpt, small_task_data, judge, foreign_adapter, tmp_path_factory) -> Path:
    """The undisturbed reference run's directory (see the module docstring); only read by its users."""
    from polyaudio_rl import train

    run = tmp_path_factory.mktemp("calm") / "run"
    assert train.main(["--config", str(TINY_CPU), "--run-dir", str(run), "--quiet", "--init-adapter",
                       str(foreign_adapter), *reference_overrides(tiny_ckpt, small_task_data, judge.url)]) == 0
    return run
