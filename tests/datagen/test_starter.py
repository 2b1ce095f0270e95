"""The starter curriculum (datagen/tasks/starter.py): three tasks' signal variants whose exact keys are checked
from the decoded audio — noise by spectral flatness, a high tone by its spectral peak, beeps by short-time energy."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.audio import SR, decode
from datagen.build import plan
from datagen.config import DatagenConfig
from datagen.generate import make_item
from datagen.tasks.base import Context
from datagen.tasks.starter import STARTER_TASKS
from rewards.verifiers import verify

N = 12  # items per task: clip counts cycle 2..3


@pytest.fixture(scope="module")
def samples():
    cfg = DatagenConfig(preset="starter", max_clips=3)
    cfg.validate()
    ctx = Context(cfg, "bench")
    out = {}
    for task in STARTER_TASKS:
        out[task] = []
        for i in range(N):
            r = make_item(ctx, task, i)
            assert r.sample is not None, f"{task}#{i}: {r.reason}: {r.detail}"
            out[task].append(r.sample)
    return out


def _waves(s):
    return [decode(c.audio)[0] for c in s.clips]


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _flatness(x):
    p = np.abs(np.fft.rfft(x)) ** 2 + 1e-12
    return float(np.exp(np.mean(np.log(p))) / np.mean(p))


def _beeps(x, frame=0.02):
    """Number of runs of frames whose energy is far above silence."""
    n = int(frame * SR)
    e = np.array([_rms(x[i: i + n]) for i in range(0, x.size - n + 1, n)])
    on = e > 0.05
    return int(np.sum(on[1:] & ~on[:-1]) + on[0])


def test_starter_preset_selects_the_three_tasks_and_paper_stays_the_default():
    assert DatagenConfig(preset="starter").task_list() == list(STARTER_TASKS)
    assert DatagenConfig(curriculum="starter").task_list() == list(STARTER_TASKS)
    assert len(DatagenConfig().task_list()) == 11 and DatagenConfig().curriculum == "paper"
    assert {t for t, _ in plan(DatagenConfig(preset="starter"), "bench")} == set(STARTER_TASKS)
    with pytest.raises(ValueError, match="curriculum"):
        DatagenConfig(curriculum="easy").validate()


def test_odd_one_out_key_is_the_noise_clip(samples):
    for s in samples["odd_one_out"]:
        flat = [_flatness(w) for w in _waves(s)]
        assert int(np.argmax(flat)) + 1 == s.key["value"], (s.id, flat)
        assert sorted(flat)[-2] < 0.1 < flat[s.key["value"] - 1]  # tones are peaky, white noise flat


def _peak_hz(x):
    return float(np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size)


def test_entailment_key_says_whether_a_clip_is_a_high_tone_by_its_spectral_peak(samples):
    labels = set()
    for s in samples["entailment"]:
        peaks = [_peak_hz(w) for w in _waves(s)]
        assert all(_flatness(w) < 0.1 for w in _waves(s)), s.id  # only tones: never an odd_one_out's noise clip
        high = [i + 1 for i, f in enumerate(peaks) if f > 1500]
        assert all(200 <= f <= 4000 for f in peaks) and len(high) <= 1, (s.id, peaks)
        assert s.key == {"type": "yesno", "value": "Yes" if high else "No"}, (s.id, peaks)
        assert high == ([s.metadata["high_clip"]] if high else []), (s.id, peaks)
        assert "high" in s.question and s.metadata["answer_space"] == ["Yes", "No"]
        labels.add(s.key["value"])
    assert labels == {"Yes", "No"}


def test_counting_key_is_the_number_of_beeps_by_energy(samples):
    totals = set()
    for s in samples["counting"]:
        per = [_beeps(w) for w in _waves(s)]
        assert per == s.metadata["per_clip"], s.id
        assert sum(per) == s.key["value"] >= 1 and s.key["type"] == "count"
        totals.add(s.key["value"])
    assert totals == {1, 2, 3}


def test_counting_totals_are_uniform_over_one_to_n_clips():
    """A constant answer must score 1/n (the chance the report prints): with a coin flip per clip and at least one
    beep, "1." would score ~0.55 and a policy could look like it counts while it only learned the prior."""
    from collections import Counter

    ctx = Context(DatagenConfig(preset="starter", max_clips=3), "train")
    by_n: dict[int, Counter] = {2: Counter(), 3: Counter()}
    for i in range(120):
        s = make_item(ctx, "counting", i).sample
        by_n[len(s.clips)][s.key["value"]] += 1
    for n, counts in by_n.items():
        assert sorted(counts) == list(range(1, n + 1)), (n, counts)
        share = max(counts.values()) / sum(counts.values())
        assert share < 1 / n + 0.15, (n, counts)  # 60 items per n: a constant answer stays near 1/n


def test_keys_verify_with_the_tasks_rule_verifiers_and_answer_space(samples):
    for task, ss in samples.items():
        for s in ss:
            n = len(s.clips)
            space = ["Yes", "No"] if s.key["type"] == "yesno" else list(range(1, n + 1))
            assert 2 <= n <= 3 and s.metadata["answer_space"] == space
            assert verify(s, s.answer).score == 1.0, (s.id, s.answer)
            wrong = next(a for a in s.metadata["answer_space"] if a != s.key["value"])
            bad = f"Clip {wrong}." if s.key["type"] == "clip" else f"{wrong}."
            assert verify(s, bad).score == 0.0, (s.id, bad)
