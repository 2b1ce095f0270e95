"""Bad input: missing engines fail at start with a clear message; failing engines, missing/unreadable files and bad
manifest rows are skipped and counted; the rest of the build is kept."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import soundfile as sf

from datagen.__main__ import load_config, main
from datagen.build import build, check_setup
from datagen.generate import make_item
from polyaudio_rl.core.schema import read_samples, shard_paths
from datagen.sources.corpora import CorpusSet, load_manifest
from datagen.sources.events import EventCatalogue, EventFile
from datagen.sources.speech import EngineMissing
from datagen.tasks.base import Context


def test_missing_engine_is_an_error_at_start(tmp_path, capsys):
    cfg = load_config(None, ["espeak_binary=/nonexistent/espeak-ng"])
    with pytest.raises(EngineMissing, match=r"'espeak-ng'.*apt-get install espeak-ng"):
        check_setup(cfg)
    cfg = load_config(None, ["soundfont=/nonexistent/gm.sf2"])
    with pytest.raises(EngineMissing, match="fluid-soundfont-gm"):
        check_setup(cfg)
    cfg = load_config(None, ["speech_engines=[openai]"])
    with pytest.raises(EngineMissing, match="openai"):
        check_setup(cfg)
    rc = main(["build", "--split", "bench", "--out", str(tmp_path / "x"), "--set", "flite_binary=/no/flite", "--quiet"])
    assert rc == 2
    assert "speech engine 'flite' not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x") or not shard_paths(str(tmp_path / "x"))


def test_unknown_config_key_names_the_key(capsys):
    assert main(["build", "--split", "bench", "--out", "/tmp/unused", "--set", "speach_engines=[flite]"]) == 2
    err = capsys.readouterr().err
    assert "speach_engines" in err and "speech_engines" in err


def test_failing_tts_engine_items_are_skipped_and_counted(tmp_path):
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'synthesis exploded' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    cfg = load_config(None, [f"espeak_binary={fake}", "speech_engines=[espeak-ng]", "items_per_task={bench: 2}",
                             "max_attempts=2"], preset="ci", workers=1, tasks=["needle_qa", "counting"])
    rep = build(cfg, "bench", str(tmp_path / "out"), progress=False)
    assert rep.rejects["speech engine failed"] == 2      # both needle_qa items
    assert "exit 3" in rep.reject_examples["speech engine failed"]
    samples = read_samples(str(tmp_path / "out"))
    assert [s.task for s in samples] == ["counting", "counting"]  # the rest of the build is kept
    card = json.load(open(tmp_path / "out" / "datacard.json"))
    assert card["rejects"] == {"speech engine failed": 2} and card["skipped"] == 2
    assert card["rejects_by_task"] == {"needle_qa": 2}


def test_missing_and_unreadable_event_files_are_counted(tmp_path):
    ctx = Context(load_config(None, []), "train")
    good = ctx.events.files[0]
    x = np.sin(np.linspace(0, 2000, 8000)).astype(np.float32) * 0.5
    gone = tmp_path / "gone.wav"
    sf.write(gone, x, 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really a wav file")
    files = [good, EventFile(str(gone), "zap", "alert", "test", "CC0"), EventFile(str(junk), "zip", "alert", "t", "")]
    cat = EventCatalogue(files)
    assert cat.missing == [] and len(cat.files) == 3
    os.remove(gone)
    ctx.events = cat
    # every item of these tasks needs the two broken labels sooner or later
    reasons = {make_item(ctx, "temporal_grounding", i).reason for i in range(6)}
    assert {"missing source file", "unreadable source file"} & reasons, reasons
    assert EventCatalogue([EventFile(str(gone), "zap", "alert", "t", "")]).missing == [str(gone)]


def test_manifest_bad_rows_are_skipped_and_counted(tmp_path):
    x = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 44100)
    sf.write(tmp_path / "b.flac", x, 16000)
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    lines = [
        {"file_name": "a.wav", "caption": "a dog barks twice near a road"},
        {"file_name": "b.flac", "caption_1": "rain falls on a metal roof"},
        {"file_name": "missing.wav", "caption": "never there"},
        {"caption": "no path at all"},
        {"file_name": "bad.wav", "caption": "unreadable audio"},
    ]
    man = tmp_path / "clotho.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    rows, rejects, ex = load_manifest(str(man), "clotho")
    assert [os.path.basename(r.path) for r in rows] == ["a.wav", "b.flac", "bad.wav"]
    assert rejects == {"missing source file": 1, "manifest row without audio path": 1, "malformed manifest row": 1}
    assert "missing.wav" in ex["missing source file"]
    csv_man = tmp_path / "audiocaps.csv"
    csv_man.write_text("audiocap_id,path,caption\n1,a.wav,a dog barks\n2,,nothing\n")
    rows, rejects, _ = load_manifest(str(csv_man), "audiocaps")
    assert len(rows) == 1 and rows[0].caption == "a dog barks" and rejects == {"manifest row without audio path": 1}
    # captioning draws from the corpus; the unreadable file makes an item fail with a reason, never a crash
    cfg = load_config(None, [f"corpora={{clotho: {man}}}", "corpus_fraction=1.0", "bench_holdout=0.01"])
    ctx = Context(cfg, "train")
    ctx.corpora = CorpusSet.from_config(cfg, "train")
    assert len(ctx.corpora.rows) == 3
    results = [make_item(ctx, "captioning", i) for i in range(4)]
    ok = [r.sample for r in results if r.sample is not None]
    assert ok, [r.detail for r in results]
    s = ok[0]
    corpus_clips = [m for m in s.metadata["clips"] if m["kind"] == "corpus"]
    assert corpus_clips and all(m["caption"] in s.answer for m in corpus_clips if s.metadata["variant"] == "aggregated")
    failed = [r for r in results if r.sample is None]
    assert all(r.reason == "unreadable source file" for r in failed)
