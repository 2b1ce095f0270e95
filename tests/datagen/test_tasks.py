"""Every task generator yields valid samples whose ground truth matches the audio.

Audio checks: every placed sound event is really in the mixture at the stated times (the stated window holds the
source file's waveform: correlation with it, and energy well above the background); every speech clip is exactly
the stated speaker saying the stated sentences (the local engines are deterministic, so re-synthesis must
reproduce the clip); music clip lengths match their stated tempo; speaker-linking keys use the voices they say.
"""
from __future__ import annotations

import numpy as np
import pytest

from datagen.audio import SR, concat, decode
from datagen.config import DatagenConfig
from datagen.generate import make_item
from polyaudio_rl.core.schema import TASKS
from datagen.sources.speech import roster
from datagen.tasks.base import Context
from datagen.text import content_words, number_words

N_PER_TASK = 4  # clip counts 2, 3, 4, 5


@pytest.fixture(scope="module")
def ctx():
    return Context(DatagenConfig(), "train")


@pytest.fixture(scope="module")
def samples(ctx):
    out = {}
    for task in TASKS:
        out[task] = []
        for i in range(N_PER_TASK):
            r = make_item(ctx, task, i)
            assert r.sample is not None, f"{task}#{i} rejected: {r.reason}: {r.detail}"
            out[task].append(r.sample)
    return out


def clips_audio(s):
    return [decode(c.audio)[0] for c in s.clips]


def test_all_tasks_valid_and_balanced(samples):
    for task, ss in samples.items():
        assert [len(s.clips) for s in ss] == [2, 3, 4, 5], task
        for s in ss:
            s.validate()
            assert s.task == task and s.split == "train"
            assert s.question.strip() and s.answer.strip()
            for c in s.clips:
                x, sr = decode(c.audio)
                assert sr == SR == c.sample_rate
                assert abs(x.size / sr - c.duration) < 1e-3 and 0.2 < c.duration <= 30.0
                assert np.abs(x).max() > 0.05, f"{s.id}: silent clip"


def _check_events(s, x, meta):
    """Each stated event: the mixture window correlates with the source file, energy >> background."""
    from datagen.sources.events import EventCatalogue, EventFile

    cat = EventCatalogue([])
    evs = meta["events"]
    mask = np.ones(x.size, bool)
    for e in evs:
        a, b = int(round(e["start"] * SR)), int(round(e["end"] * SR))
        mask[max(0, a - 800): b + 800] = False
    bg = float(np.sqrt(np.mean(x[mask] ** 2)))
    assert bg > 0, f"{s.id}: no background between events"
    for e in evs:
        a, b = int(round(e["start"] * SR)), int(round(e["end"] * SR))
        win = x[a:b]
        src = cat.load(EventFile(e["source"], e["label"], "", "", ""))
        assert abs(src.size - win.size) <= 1, f"{s.id}: {e} length differs from its source file"
        n = min(src.size, win.size)
        corr = float(np.dot(win[:n], src[:n]) / (np.linalg.norm(win[:n]) * np.linalg.norm(src[:n]) + 1e-12))
        assert corr > 0.9, f"{s.id}: event {e['label']} at {e['start']} s not found in the mixture (corr {corr:.2f})"
        e_rms = float(np.sqrt(np.mean(win ** 2)))
        assert e_rms > 3 * bg, f"{s.id}: event {e['label']} energy {e_rms:.4f} vs background {bg:.4f}"
        # the stated start is exact: the source lines up best at lag 0 among shifts of up to +-10 ms
        lag = 160
        seg = x[max(0, a - lag): a + n + lag]
        if seg.size == n + 2 * lag:
            xc = np.correlate(seg, src[:n], mode="valid")
            assert abs(int(np.argmax(xc)) - lag) <= 1, f"{s.id}: {e['label']} is not at {e['start']} s"


def _check_speech(s, x, meta, synth, speakers):
    sp = speakers[meta["speaker"]]
    ref = concat([synth.say(sp, t, meta.get("instructions", "")) for t in meta["sentences"]], 0.35)
    assert " ".join(meta["sentences"]) == meta["transcript"]
    assert abs(ref.size - x.size) <= 1, f"{s.id}: clip is not {sp.id} saying {meta['transcript']!r}"
    n = min(ref.size, x.size)
    assert np.max(np.abs(ref[:n] - x[:n])) < 2e-3, f"{s.id}: clip differs from {sp.id} saying the transcript"


def test_ground_truth_matches_audio(samples, ctx):
    speakers = {sp.id: sp for sp in roster(ctx.cfg)}
    kinds = set()
    for task, ss in samples.items():
        for s in ss:
            for x, meta in zip(clips_audio(s), s.metadata["clips"]):
                kinds.add(meta["kind"])
                if meta["kind"] == "events":
                    _check_events(s, x, meta)
                elif meta["kind"] == "speech":
                    _check_speech(s, x, meta, ctx.synth, speakers)
                elif meta["kind"] == "music":
                    beats = meta["bars"] * 4 * 60.0 / meta["tempo"]
                    assert beats - 0.5 < x.size / SR < beats + 1.2, f"{s.id}: music length vs tempo {meta['tempo']}"
    assert kinds >= {"events", "speech", "music"}


def _transcripts(s):
    return [m.get("transcript", "") for m in s.metadata["clips"]]


def test_keys_follow_from_content(samples):
    for s in samples["counting"]:
        target = s.metadata["target"]
        n = sum(e["label"] == target for e in s.metadata["events"])
        assert s.key == {"type": "count", "value": n, "tolerance": 0}
        assert {e["clip"] for e in s.metadata["events"] if e["label"] == target} <= set(s.relevant_clips)
        assert s.relevant_clips == list(range(1, len(s.clips) + 1))  # a count across clips depends on every clip
    for s in samples["temporal_grounding"]:
        hits = [e for e in s.metadata["events"] if e["label"] == s.metadata["target"]]
        assert len(hits) == 1 and hits[0]["clip"] == s.key["clip"]
        assert (hits[0]["start"], hits[0]["end"]) == (s.key["start"], s.key["end"])
    for s in samples["common_keyword"]:
        common = set.intersection(*(content_words(t) for t in _transcripts(s)))
        assert common == set(s.key["value"]) and s.key["type"] == "keywords"
    for s in samples["needle_qa"]:
        k = s.key["clips"][0]
        tr = _transcripts(s)
        needle = s.key["value"] if s.metadata["variant"] == "name" else number_words(int(s.key["value"]))
        assert [needle in t for t in tr].count(True) >= 1 and needle in tr[k - 1]
        if s.metadata["variant"] == "number":
            assert [needle in t for t in tr].count(True) == 1
    for s in samples["factual_consistency"]:
        if s.key["type"] == "value":
            w = number_words(int(s.key["value"]))
            has = [i for i, t in enumerate(_transcripts(s), 1) if f" {w} " in f" {t} "]
            assert has == s.key["clips"] and len(has) > len(s.clips) / 2
    for s in samples["chronological_ordering"]:
        steps = [m["story_step"] for m in s.metadata["clips"]]
        order = sorted(range(1, len(steps) + 1), key=lambda c: steps[c - 1])
        got = s.key["value"] if s.key["type"] == "permutation" else \
            [int(v) for v in s.choices[ord(s.key["value"]) - 65].split(", ")]
        assert got == order
    from datagen.text import DAYS

    cues = {"day": DAYS, "place": ["held at", "moves to"], "time": ["starts at", "doors open"],
            "quantity": ["there will be"]}
    for s in samples["entailment"]:
        ev = s.metadata["claim"].split(" is ")[0].split(" starts ")[0].split(" has ")[0].lower().removeprefix("the ")
        about = [[x for x in m["sentences"] if ev in x.lower()] for m in s.metadata["clips"]]
        truth, used, stated = s.metadata["truth"], s.metadata["attributes_used"], s.metadata["stated"]
        for a in ("day", "place", "time", "quantity"):  # exactly the stated attributes are said about the event
            said = [i for i, sents in enumerate(about, 1) for x in sents if any(c.lower() in x.lower() for c in cues[a])]
            assert said == ([stated[a]] if a in stated else []), (s.id, a, said, stated)
        val = {a: (f"{number_words(truth[a][0])} {truth[a][1]}" if a == "quantity" else str(truth[a])) for a in truth}
        if s.key["value"] == "Not enough information":
            assert used[0] not in stated
        else:
            for a in used:
                assert any(val[a].lower() in x.lower() for x in about[stated[a] - 1]), (s.id, a)
            assert (s.key["value"] == "Yes") == all(val[a].lower() in s.metadata["claim"].lower() for a in used)
            assert s.relevant_clips == sorted({stated[a] for a in used})
    for s in samples["odd_one_out"]:
        k = s.key["value"]
        if s.metadata["variant"] == "kind":
            cls = [m["kind"] if m["kind"] != "events" else m["events"][0]["category"] for m in s.metadata["clips"]]
            assert all(c == s.metadata["common"] for m in s.metadata["clips"] for c in
                       ([e["category"] for e in m.get("events", [])] or [m["kind"]])
                       if s.metadata["clips"].index(m) != k - 1)
        else:
            cls = [m["families"][0] for m in s.metadata["clips"]]
        assert cls[k - 1] == s.metadata["odd"] and cls.count(s.metadata["odd"]) == 1
        assert all(c == s.metadata["common"] for i, c in enumerate(cls, 1) if i != k)
    for s in samples["captioning"]:
        for kw in s.key["keywords"]:
            assert kw.lower() in s.answer.lower() or kw == "speech"


def test_speaker_linking_uses_the_voices_it_says(samples):
    for s in samples["speaker_linking"]:
        voices = [m["speaker"] for m in s.metadata["clips"]]
        assert voices == s.metadata["voices"]
        k = s.key
        if k["type"] == "yesno":
            assert (voices[0] == voices[1]) == (k["value"] == "Yes")
        else:
            x, y = s.metadata["linked"]
            assert voices[x - 1] == voices[y - 1]
            assert [v for v in voices].count(voices[x - 1]) == 2, "the linked voice must occur exactly twice"
            if k["type"] == "clip":
                assert k["value"] in (x, y)
            else:  # the name said by that voice
                intro = [m["transcript"] for m in s.metadata["clips"] if m["speaker"] == voices[x - 1]]
                assert any(f"this is {k['value']}" in t for t in intro)


def test_bench_context_is_disjoint(ctx):
    bench = Context(DatagenConfig(), "bench")
    assert not {s.id for s in bench.speakers} & {s.id for s in ctx.speakers}
    assert not {f.path for f in bench.events.files} & {f.path for f in ctx.events.files}
    assert not set(bench.lex.names) & set(ctx.lex.names)
    assert not set(bench.lex.places) & set(ctx.lex.places)
    assert len(roster(ctx.cfg)) >= 8 and len(bench.speakers) >= 4
