"""The builder end to end: CLI, shards (pyarrow + Ray Data), data card, inspect, determinism, bench/train disjointness."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from datagen.__main__ import load_config, main
from datagen.audio import decode
from datagen.build import build
from polyaudio_rl.core.schema import ARROW_SCHEMA, TASKS, read_samples, shard_paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "datagen", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = run_cli("build", "--split", "bench", "--preset", "ci", "--out", str(out), "--seed", "7", "--workers", "2",
                "--set", "items_per_task={bench: 4}", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "44/44 items" in r.stdout, r.stdout
    return str(out)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    cfg = load_config(None, ["items_per_task={train: 2}"], preset="ci", seed=7, workers=1)
    build(cfg, "train", out, progress=False)
    return out


def test_shards_roundtrip_and_balance(bench_dir):
    paths = shard_paths(bench_dir)
    assert paths and not [p for p in os.listdir(bench_dir) if ".tmp" in p]
    for p in paths:
        assert pq.read_schema(p).equals(ARROW_SCHEMA, check_metadata=False)
    samples = read_samples(bench_dir)
    assert len(samples) == 44 and len({s.id for s in samples}) == 44
    counts = Counter((s.task, len(s.clips)) for s in samples)
    assert counts == Counter({(t, k): 1 for t in TASKS for k in (2, 3, 4, 5)})
    for s in samples:
        s.validate()
        x, sr = decode(s.clips[0].audio)
        assert sr == 16000 and s.clips[0].audio[:4] == b"fLaC"
    card = json.load(open(os.path.join(bench_dir, "datacard.json")))
    assert card["written"] == 44 and card["clip_count_histogram"] == {"2": 11, "3": 11, "4": 11, "5": 11}
    assert os.path.exists(os.path.join(bench_dir, "DATACARD.md")) and os.path.exists(os.path.join(bench_dir, "datacard.png"))
    assert card["licences"] and card["speakers"]


def test_ray_data_reads_the_shards(bench_dir):
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_parquet(bench_dir)
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 44
    assert sorted(r["id"] for r in rows) == sorted(s.id for s in read_samples(bench_dir))
    clip = rows[0]["clips"][0]
    x, sr = decode(bytes(clip["audio"]))
    assert sr == 16000 and x.size > 0


def test_same_seed_same_content(bench_dir, tmp_path):
    """Same seed => same items, byte for byte, whatever the number of workers."""
    cfg = load_config(None, ["items_per_task={bench: 4}"], preset="ci", seed=7, workers=1,
                      tasks=["needle_qa", "counting", "comparison"])
    build(cfg, "bench", str(tmp_path), progress=False)
    again = {s.id: s for s in read_samples(str(tmp_path))}
    first = {s.id: s for s in read_samples(bench_dir) if s.id in again}
    assert len(again) == 12 and set(first) == set(again)
    for i, s in again.items():
        t = first[i]
        assert (s.question, s.answer, s.key, s.metadata) == (t.question, t.answer, t.key, t.metadata)
        assert [c.audio for c in s.clips] == [c.audio for c in t.clips]
    cfg2 = load_config(None, ["items_per_task={bench: 4}"], preset="ci", seed=8, workers=1, tasks=["needle_qa"])
    build(cfg2, "bench", str(tmp_path / "other"), progress=False)
    other = read_samples(str(tmp_path / "other"))
    assert [s.question for s in other] != [again[s.id].question for s in other]


def _material(samples):
    speakers, sentences, files = set(), set(), set()
    for s in samples:
        for m in s.metadata["clips"]:
            if m["kind"] == "speech":
                speakers.add(m["speaker"])
                sentences.update(m["sentences"])
            for e in m.get("events", []):
                files.add(e["source"])
    return speakers, sentences, files


def test_bench_disjoint_from_train(bench_dir, train_dir):
    b_sp, b_se, b_f = _material(read_samples(bench_dir))
    t_sp, t_se, t_f = _material(read_samples(train_dir))
    assert b_sp and t_sp and b_se and t_se and b_f and t_f
    assert not b_sp & t_sp, b_sp & t_sp
    assert not b_se & t_se, b_se & t_se
    assert not b_f & t_f, b_f & t_f


def test_inspect_prints_card_and_exports_wav(bench_dir, tmp_path, capsys):
    sid = read_samples(bench_dir)[3].id
    assert main(["inspect", bench_dir, "--item", sid, "--export", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PolyAudio data card" in out and sid in out and "Q:" in out
    wavs = sorted(os.listdir(tmp_path))
    assert wavs and all(w.startswith(sid) and w.endswith(".wav") for w in wavs)
    import soundfile as sf

    assert sf.info(str(tmp_path / wavs[0])).samplerate == 16000
    assert main(["inspect", bench_dir, "--item", "nope"]) == 2
