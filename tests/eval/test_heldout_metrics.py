"""eval.heldout_metrics: the ablation metrics against hand-computed tables, then read off hand-written completions."""
from __future__ import annotations

import pytest

from eval.heldout_metrics import (
    chance_level,
    format_rate,
    irrelevant_clip_rate,
    mean_length,
    paraphrase_agreement,
    paraphrase_kappa,
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


@pytest.mark.parametrize("parsed, families, strata, want", [
    # p_o: (0,1) agree, (2,3) not = 0.5; mix x 3/4, y 1/4: p_e = 9/16 + 1/16 = 0.625; (0.5 - 0.625) / 0.375
    (["x", "x", "x", "y"], ["a", "a", "b", "b"], [3, 3, 3, 3], -1 / 3),
    # an unreadable answer counts in the total, never as an answer: p_e = (3/4)^2 = 0.5625; (0.5 - 0.5625) / 0.4375
    (["x", None, "x", "x"], ["a", "a", "b", "b"], [3, 3, 3, 3], -0.0625 / 0.4375),
    # per stratum: 3 clips {x, x} p_e 1, 4 clips {y, z} p_e 0.5 -> mean 0.75; p_o 0.5 -> (0.5 - 0.75) / 0.25
    (["x", "x", "y", "z"], ["a", "a", "b", "b"], [3, 3, 4, 4], -1.0),
    # agreement beyond the mix: x, x, y, y in one stratum, p_e 0.5, p_o 1 -> 1
    (["x", "x", "y", "y"], ["a", "a", "b", "b"], [3, 3, 3, 3], 1.0),
    (["x", "x", "x", "x"], ["a", "a", "b", "b"], [3, 3, 3, 3], None),   # rote: p_e = 1, undefined
    (["x", "y"], ["a", "b"], [3, 3], None),                             # no pairs
    ([[1, 2], [1, 2], [3], [2]], ["a", "a", "b", "b"], [3, 3, 3, 3], (0.5 - 0.375) / 0.625),  # lists: 1/4+1/16+1/16
])
def test_paraphrase_kappa_table(parsed, families, strata, want):
    got = paraphrase_kappa(parsed, families, strata)
    assert got == (None if want is None else pytest.approx(want))


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
    # p_e: answers [1,3], [1,2,3], [2], [2] among the 4 items of that clip count: 1/16 + 1/16 + 4/16 = 0.375
    assert m["paraphrase_kappa"] == pytest.approx((0.5 - 0.375) / 0.625)
    assert m["format_rate"] == 3 / 4
    assert m["mean_length"] == 10.5
