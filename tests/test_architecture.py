"""The one-way layer contract (pyproject.toml [tool.importlinter]): it holds, and it catches a backward import."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("polyaudio_rl", "actors", "rewards", "eval", "datagen")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300)


def _copy_tree(dst: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.md"))


def test_layer_contract_holds():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("polyaudio_rl/core/audio.py", "from actors import rollout", "polyaudio_rl.core is not allowed to import actors"),
    ("rewards/scorer.py", "from actors import learner", "rewards is not allowed to import actors"),
    ("datagen/build.py", "import eval.bench", "datagen is not allowed to import eval"),
    ("actors/learner.py", "from polyaudio_rl import driver", "actors is not allowed to import polyaudio_rl.driver"),
])
def test_a_backward_import_breaks_the_contract(tmp_path, module, line, broken):
    _copy_tree(tmp_path)
    assert _lint(tmp_path).returncode == 0  # the copy itself is clean
    with (tmp_path / module).open("a") as fh:
        fh.write(f"\n{line}  # a backward import\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert broken in res.stdout, res.stdout


def test_no_private_imports_of_dependencies():
    """Only public APIs of our dependencies (a `ray.llm._internal` import breaks on the next Ray release)."""
    import re

    pat = re.compile(r"^\s*(from|import)\s+[\w.]*\._internal\b", re.M)
    hits = []
    for pkg in (*PACKAGES, "benchmarks", "scripts"):
        for f in (ROOT / pkg).rglob("*.py"):
            hits += [f"{f.relative_to(ROOT)}: {m.group(0).strip()}" for m in pat.finditer(f.read_text())]
    assert not hits, hits
