"""eval.heldout_metrics: the ablation metrics against hand-computed tables, then read off hand-written completions."""
from __future__ import annotations

import pytest

from eval.heldout_metrics import (
    chance_level,
    format_rate,
    irrelevant_clip_rate,
    mean_length,
    paraphrase_agreement,
    paraphrase_pairs,
    score_answers,
)
from polyaudio_rl.core.schema import Clip, Sample


@pytest.mark.parametrize("named, relevant, want", [
    ([{1}, {1, 2}, set(), {3}], [{1}, {1}, {1}, {1, 2}], 2 / 4),   # extra clip 2; clip 3 irrelevant; none named ok
    ([{1, 2, 3}], [{1, 2, 3}], 0.0),                                # every clip relevant
    ([{5}], [{1, 2}], 1.0),                                         # an out-of-range index is irrelevant
    ([], [], None),
])
def test_irrelevant_clip_rate(named, relevant, want):
    assert irrelevant_clip_rate(named, relevant) == want


def test_paraphrase_pairs_and_agreement_table():
    fams = ["a", "a", "b", "b", "b", None, "c"]
    assert paraphrase_pairs(fams) == [(0, 1), (2, 3), (2, 4), (3, 4)]
    # a: [1,2] vs [1,2] agree; b: [3] / [3] / None -> (2,3) agree, (2,4) and (3,4) not: 2 of 4
    parsed = [[1, 2], [1, 2], [3], [3], None, [1], [2]]
    assert paraphrase_agreement(parsed, fams) == pytest.approx(2 / 4)
    assert paraphrase_agreement([None, None], ["a", "a"]) == 0.0  # two unreadable answers do not agree
    assert paraphrase_agreement([[1], [2]], ["a", "b"]) is None     # no paraphrase pairs
    with pytest.raises(ValueError, match="2 answers but 1 families"):
        paraphrase_agreement([1, 2], ["a"])


@pytest.mark.parametrize("fn, values, want", [
    (format_rate, [1.0, 0.8, 1.0, 0.0], 0.5),
    (format_rate, [], None),
    (mean_length, [10, 12, 3, 7], 8.0),
])
def test_rates(fn, values, want):
    assert fn(values) == want


def _sample(sid, key, relevant, n=3, family=None, space=None):
    clips = [Clip(b"x%d" % i, 16000, 1.0, f"c{i}", "CC0") for i in range(n)]
    meta = {k: v for k, v in (("family", family), ("answer_space", space)) if v is not None}
    return Sample(id=sid, task="temporal_grounding", split="bench", clips=clips, question="Which clips contain a beep?",
                  answer="", key=key, relevant_clips=relevant, metadata=meta)


def test_chance_level_table():
    a = _sample("a", {"type": "clips", "value": [1]}, [1], space=[[1], [2], [3], [1, 2], [1, 3], [2, 3]])  # 1/6
    b = _sample("b", {"type": "clip", "value": 2}, [2], n=4)                                             # 1/4
    c = _sample("c", {"type": "count", "value": 2}, [1, 2, 3])                                            # no space
    assert chance_level([a, b, c]) == pytest.approx((1 / 6 + 1 / 4) / 2)
    assert chance_level([c]) is None


def test_score_answers_on_hand_written_completions():
    s1 = _sample("f0-p0", {"type": "clips", "value": [1, 3]}, [1, 3], family="f0")
    s2 = _sample("f0-p1", {"type": "clips", "value": [1, 3]}, [1, 3], family="f0")
    s3 = _sample("f1-p0", {"type": "clips", "value": [2]}, [2], family="f1")
    s4 = _sample("f1-p1", {"type": "clips", "value": [2]}, [2], family="f1")
    texts = ["<answer>Clips 1 and 3.</answer>",          # exact, formatted
             "<answer>Clips 1, 2 and 3.</answer>",       # extra clip 2: wrong under the exact rule, irrelevant clip
             "Clip 2.",                                 # right, but no answer tag: format 4/5
             "<answer>Clip 2.</answer>"]
    m = score_answers([s1, s2, s3, s4], texts, [13, 16, 3, 10], answer_tag=True)
    assert m["accuracy"] == 3 / 4 and m["n"] == 4 and m["per_task"] == {"temporal_grounding": 0.75}
    assert m["irrelevant_clip_rate"] == 1 / 4
    assert m["paraphrase_agreement"] == 1 / 2   # f0: [1,3] vs [1,2,3] differ; f1: [2] vs [2] agree
    assert m["format_rate"] == 3 / 4
    assert m["mean_length"] == 10.5
