"""Real-corpus manifests drive the generators: LibriSpeech speakers, PicoAudio timestamps, Music4All tempos,
Clotho captions. The files here are small WAV/FLAC files written by the test; the loaders and generators are the
production ones. Keys must follow from the manifest annotations; bench and train never share a corpus file."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from datagen.__main__ import load_config
from datagen.build import build
from polyaudio_rl.core.schema import read_samples


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(0)

    def wav(name, seconds=2.0, sr=16000):
        sf.write(d / name, (rng.standard_normal(int(seconds * sr)) * 0.1).astype(np.float32), sr)
        return name

    with open(d / "libri.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker_id", "transcript"])
        for spk in range(8):
            for u in range(3):
                w.writerow([wav(f"ls-{spk}-{u}.flac"), f"{100 + spk}", f"utterance {u} of speaker {spk}"])
    labels = ["dog barking", "door slamming", "cow mooing"]
    with open(d / "pico.jsonl", "w") as fh:
        for i in range(16):
            evs = [[labels[(i + j) % 3], 0.5 + 2 * j, 1.5 + 2 * j] for j in range(1 + i % 3)]
            fh.write(json.dumps({"path": wav(f"pico-{i}.wav", 8.0), "events": evs}) + "\n")
    with open(d / "m4a.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "tempo", "key", "mode", "genres"])
        for i in range(12):
            w.writerow([f"t{i}", wav(f"m4a-{i}.wav", 3.0, 22050), 60 + 15 * i, "C", "1", "pop"])
    return {"librispeech": str(d / "libri.csv"), "picoaudio": str(d / "pico.jsonl"), "music4all": str(d / "m4a.csv")}


def _build(tmp_path, corpora, split):
    over = ["corpus_fraction=1.0", "items_per_task={%s: 4}" % split, "corpora=" + json.dumps(corpora)]
    cfg = load_config(None, over, preset="ci", seed=3, workers=1,
                      tasks=["speaker_linking", "temporal_grounding", "counting", "comparison"])
    rep = build(cfg, split, str(tmp_path / split), progress=False)
    return rep, read_samples(str(tmp_path / split))


def test_corpus_driven_items(tmp_path, corpora):
    rep, samples = _build(tmp_path, corpora, "train")
    assert rep.written == 16, rep.as_dict()["reject_examples"]
    pico = {json.loads(l)["path"]: json.loads(l)["events"] for l in open(corpora["picoaudio"])}
    tempo = {r["path"]: float(r["tempo"]) for r in csv.DictReader(open(corpora["music4all"]))}
    for s in samples:
        metas = s.metadata["clips"]
        assert all(m["kind"] == "corpus" for m in metas), s.id
        base = [m["path"].rsplit("/", 1)[1] for m in metas]
        if s.task == "speaker_linking":
            spk = [m["speaker"] for m in metas]
            if s.key["type"] == "yesno":
                assert (spk[0] == spk[1]) == (s.key["value"] == "Yes")
            else:
                x, y = s.metadata["linked"]
                assert spk[x - 1] == spk[y - 1] and spk.count(spk[x - 1]) == 2 and s.key["value"] in (x, y)
        elif s.task == "temporal_grounding":
            t = s.metadata["target"]
            hits = [(i, e) for i, b in enumerate(base, 1) for e in pico[b] if e[0] == t]
            assert len(hits) == 1 and hits[0][0] == s.key["clip"]
            assert (hits[0][1][1], hits[0][1][2]) == (s.key["start"], s.key["end"])
        elif s.task == "counting":
            t = s.metadata["target"]
            assert s.key["value"] == sum(e[0] == t for b in base for e in pico[b])
        elif s.task == "comparison":
            ts = [tempo[b] for b in base]
            want = max(ts) if s.metadata["asked"] in ("fastest", "faster") else min(ts)
            assert ts[s.key["value"] - 1] == want


def test_corpus_rows_split_between_bench_and_train(tmp_path, corpora):
    _, train = _build(tmp_path, corpora, "train")
    _, bench = _build(tmp_path, corpora, "bench")
    files = lambda ss: {m["path"] for s in ss for m in s.metadata["clips"] if m["kind"] == "corpus"}  # noqa: E731
    assert files(train) and files(bench) and not files(train) & files(bench)


def test_bench_train_split_does_not_depend_on_where_the_corpus_is_mounted(tmp_path, corpora):
    import shutil
    from pathlib import Path

    from datagen.sources.corpora import CorpusSet

    moved = tmp_path / "elsewhere" / "mnt"
    shutil.copytree(Path(corpora["picoaudio"]).parent, moved)
    again = {k: str(moved / Path(v).name) for k, v in corpora.items()}

    def bench_files(c):
        cfg = load_config(None, ["bench_holdout=0.25", "corpora=" + json.dumps(c)], preset="ci")
        return sorted(Path(r.path).name for r in CorpusSet.from_config(cfg, "bench").rows)

    here = bench_files(corpora)
    assert 0 < len(here) < 52  # some of the 52 rows (24 + 16 + 12) are held out for bench, not all
    assert bench_files(again) == here
