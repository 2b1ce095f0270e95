"""An interrupted ``datagen build`` completes when re-run (issue 14 item 6).

A build runs as a subprocess and is SIGKILLed once its first shard is recorded; re-running the same command keeps
the finished shards and generates the rest. Items (ids, keys, answers, audio) equal an uninterrupted build of the
same seed, none missing or duplicated, and the data card says the build was resumed and how much was kept.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from datagen.build import PROGRESS_FILE, interrupted
from polyaudio_rl.core.schema import read_samples, shard_paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--split", "train", "--preset", "starter", "--seed", "3", "--workers", "1", "--quiet",
        "--set", "items_per_task={train: 12}"]  # 3 tasks x 12 = 36 items, shards of 4


def _cmd(out, *extra):
    return [sys.executable, "-m", "datagen", "build", *ARGS, "--out", str(out), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _run(out, *extra):
    r = subprocess.run(_cmd(out, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _items(d):
    return [(s.id, s.task, json.dumps(s.key, sort_keys=True), s.answer, [c.audio for c in s.clips])
            for s in read_samples(str(d))]


def _recorded_shards(out):
    try:
        return len(json.load(open(os.path.join(out, PROGRESS_FILE)))["shards"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(out)
    assert not interrupted(str(out))
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A build SIGKILLed right after its first shard was recorded (kept pristine; tests copy it)."""
    out = tmp_path_factory.mktemp("killed") / "train"
    p = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while _recorded_shards(out) < 1 and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert p.poll() is None, "the build finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    assert interrupted(str(out)) and not os.path.exists(os.path.join(out, "datacard.json"))
    n = len(shard_paths(str(out)))
    assert 1 <= n < 9, f"{n} shards at the kill"
    return out


@pytest.fixture
def work(killed, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(killed, d)
    return d


def test_rerun_completes_the_interrupted_build(work, reference):
    before = {os.path.basename(p): os.stat(p).st_mtime_ns for p in shard_paths(str(work))}
    kept_expected = _recorded_shards(work)
    r = _run(work)
    assert "resumed an interrupted build: kept" in r.stdout
    got, want = _items(work), _items(reference)
    assert len({i[0] for i in got}) == len(got) == 36  # nothing duplicated
    assert got == want  # same ids, tasks, keys, answers and audio, in the same order: nothing missing
    assert [os.path.basename(p) for p in shard_paths(str(work))] == [os.path.basename(p)
                                                                     for p in shard_paths(str(reference))]
    assert not interrupted(str(work))
    card = json.load(open(os.path.join(work, "datacard.json")))
    ref_card = json.load(open(os.path.join(reference, "datacard.json")))
    assert card["resumed"] is True and card["kept_shards"] == kept_expected and card["resumes"] == 1
    assert card["kept_items"] == 4 * kept_expected and card["resumed_at_item"] >= card["kept_items"]
    assert ref_card["resumed"] is False and ref_card["kept_shards"] == 0
    for key in ("written", "planned", "skipped", "counts", "clip_count_histogram", "durations", "speakers",
                "event_labels", "licences", "clip_kinds", "shards", "audio_bytes", "rejects", "retries"):
        assert card[key] == ref_card[key], key  # the card describes the whole split, kept shards included
    assert "Resumed: this build was interrupted" in open(os.path.join(work, "DATACARD.md")).read()
    # the kept shards were not rewritten
    kept = sorted(before)[:kept_expected]
    assert all(os.stat(os.path.join(work, f)).st_mtime_ns == before[f] for f in kept)


def test_a_damaged_kept_shard_is_regenerated(work, reference):
    first = shard_paths(str(work))[0]
    data = bytearray(open(first, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(first, "wb").write(bytes(data))
    r = _run(work)
    assert "train-00000.parquet is missing or damaged" in r.stderr
    assert _items(work) == _items(reference)
    assert json.load(open(os.path.join(work, "datacard.json")))["resumed"] is False


def test_fresh_builds_from_scratch(work, reference):
    r = _run(work, "--fresh")
    assert "resumed" not in r.stdout
    assert _items(work) == _items(reference)
    assert json.load(open(os.path.join(work, "datacard.json")))["resumed"] is False


def test_another_configuration_is_not_resumed(killed, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(killed, d)
    r = subprocess.run([*_cmd(d)[:-2], "--seed", "4", "--out", str(d)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "different configuration" in r.stderr and "resumed" not in r.stdout
    card = json.load(open(os.path.join(d, "datacard.json")))
    assert card["seed"] == 4 and card["resumed"] is False and card["written"] == 36
    assert all(s.id for s in read_samples(str(d)))
