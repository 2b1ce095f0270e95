"""Table tests for clip-parsimony, format and consistency, plus the registry. Hand-computed values."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rewards.consistency import GroupAnswers, clip_fingerprint, consistency, group_consistency, similarity
from rewards.format import format_reward
from rewards.parsimony import parsimony
from rewards.registry import RewardResult, get_reward, list_rewards
from polyaudio_rl.core.config.reward import REWARD_COMPONENTS

_spec = importlib.util.spec_from_file_location("reward_samples", Path(__file__).with_name("reward_samples.py"))
reward_samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_samples)
make_sample = reward_samples.make_sample

# relevant clip: 2 of 4
ODD = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=4, relevant=[2])
ALLREL = make_sample("counting", {"type": "count", "value": 3}, n_clips=3)  # every clip relevant
NOREL = make_sample("needle_qa", {"type": "clip", "value": 1}, n_clips=3, relevant=[])


@pytest.mark.parametrize("sample,text,expected", [
    (ODD, "Audio 2", 1.0),
    (ODD, "The second clip.", 1.0),
    (ODD, "Audio 1 or Audio 2", 0.5),  # U={1,2}, R={2}
    (ODD, "Audio 1, Audio 2, Audio 3 and Audio 4", 0.25),  # listing all clips is not a free pass
    (ODD, "All clips sound different.", 0.25),  # "all clips" = {1,2,3,4}
    (ODD, "the first and last clips", 0.0),  # U={1,4}
    (ODD, "Audio 9", 0.0),  # out of range: irrelevant
    (ODD, "It is a dog.", 1.0),  # no clip named
    (ODD, "<think>clip 1 and clip 3 are speech</think>Audio 2", 1.0),  # think blocks are not read
    (ALLREL, "Across all three clips: 3 barks.", 1.0),
    # "2 in clip 1, 3 in clip 2": the 3 is a count, not a clip: U={1,2}, R={2} -> 1/2
    (ODD, "2 in clip 1, 3 in clip 2", 0.5),
    (NOREL, "clips 1 and 3", 1.0),  # no relevant_clips: all clips count as relevant
])
def test_parsimony(sample, text, expected):
    assert parsimony(sample, text).score == pytest.approx(expected)


def test_parsimony_scope_answer():
    text = "Clip 1 is speech, clip 3 is speech.\n\nThe answer is Audio 2."
    assert parsimony(ODD, text).score == pytest.approx(1 / 3)  # U={1,2,3}
    assert parsimony(ODD, text, parsimony_scope="answer").score == 1.0


@pytest.mark.parametrize("text,answer_tag,expected,failed", [
    ("Audio 2", False, 1.0, []),
    ("", False, 0.5, ["non_empty", "one_answer"]),  # 4 checks: length and no_repetition pass -> 2/4
    ("Audio 1 or Audio 2", False, 0.75, ["one_answer"]),
    ("<answer>Audio 3</answer>", True, 1.0, []),  # wrong but well-formed
    ("Audio 2", True, 0.8, ["answer_tag"]),  # tag asked for, missing: 4/5
    ("<answer>2</answer> and more text", True, 0.8, ["answer_tag"]),
    ("<answer>2</answer><answer>3</answer>", True, 0.8, ["answer_tag"]),
    # a stray opening tag: two answers, the last one ("Audio 3") is the answer region; the tag check fails: 4/5
    ("<answer>Audio 2<answer>Audio 3</answer>", True, 0.8, ["answer_tag"]),
    ("<answer>Audio 2<answer>", True, 0.8, ["answer_tag"]),  # the closing tag written as an opening one: no pair
    ("Audio 2 " + "the dog barks " * 10, False, 0.5, ["length", "no_repetition"]),  # 32 words > 20; loops
])
def test_format(text, answer_tag, expected, failed):
    r = format_reward(ODD, text, answer_tag=answer_tag, format_max_words=20)
    assert r.score == pytest.approx(expected), r.info
    assert r.info["failed"] == failed


def test_format_shapes():
    perm = make_sample("chronological_ordering", {"type": "permutation", "value": [2, 1, 3]}, n_clips=3)
    assert format_reward(perm, "3, 1, 2").score == 1.0  # wrong order, right shape
    assert "one_answer" in format_reward(perm, "3, 1").info["failed"]  # incomplete
    cnt = make_sample("counting", {"type": "count", "value": 2}, n_clips=2)
    assert format_reward(cnt, "seven").score == 1.0
    assert "one_answer" in format_reward(cnt, "a few").info["failed"]


# ---------------------------------------------------------------------------------------------- consistency
def test_similarity_table():
    assert similarity("clip", 2, 2) == 1.0
    assert similarity("clip", 2, 3) == 0.0
    assert similarity("clip", None, None) == 0.0
    assert similarity("keywords", ["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert similarity("interval", [2, 1.0, 3.0], [2, 2.0, 4.0]) == pytest.approx(1 / 3)
    assert similarity("interval", [1, 1.0, 3.0], [2, 1.0, 3.0]) == 0.0
    assert similarity("permutation", [3, 1, 2], [3, 1, 2]) == 1.0


def test_group_consistency_within():
    # answers 2, 2, 3, garbage: 1st: others (2, 3, None) -> 1/3; 3rd: (2, 2, None) -> 0; garbage -> 0
    res = group_consistency(ODD, ["Audio 2", "the second clip", "Audio 3", "???"])
    assert [r.score for r in res] == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])


def test_group_of_one_is_vacuous():
    (r,) = group_consistency(ODD, ["Audio 2"])
    assert r.score == 1.0 and r.info["vacuous"]


def test_cross_group_paraphrases():
    # Two paraphrased questions on the same clips with the same key, and an unrelated group on other clips.
    a = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, question="Which clip is odd?", sid="a")
    b = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, question="Which one differs?", sid="b")
    c = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, sid="c", freqs=[100, 200, 300])
    assert clip_fingerprint(a) == clip_fingerprint(b) != clip_fingerprint(c)
    groups = [GroupAnswers(a, [2, 2]), GroupAnswers(b, [2, 3]), GroupAnswers(c, [1, 1])]
    out = consistency(groups, consistency_cross_weight=0.5)
    # a[0]: within 1 (a[1]=2), cross over b (2,3) = 0.5 -> 0.75
    assert [r.score for r in out[0]] == pytest.approx([0.75, 0.75])
    # b[0]=2: within 0 (b[1]=3), cross over a (2,2) = 1 -> 0.5 ; b[1]=3: within 0, cross 0 -> 0
    assert [r.score for r in out[1]] == pytest.approx([0.5, 0.0])
    # c is alone in its family: within only
    assert [r.score for r in out[2]] == pytest.approx([1.0, 1.0])
    assert out[2][0].info["cross"] is None


def test_different_keys_are_not_paraphrases():
    a = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, sid="a")
    b = make_sample("needle_qa", {"type": "clip", "value": 3}, n_clips=3, sid="b")
    out = consistency([GroupAnswers(a, [2]), GroupAnswers(b, [3])])
    assert out[0][0].info["vacuous"] and out[1][0].info["vacuous"]


# ---------------------------------------------------------------------------------------------- registry
def test_registry_matches_config_components():
    assert set(list_rewards()) == set(REWARD_COMPONENTS)
    assert get_reward("consistency").level == "group"
    assert get_reward("parsimony").level == "item"
    with pytest.raises(KeyError, match="unknown reward 'speed'.*correctness"):
        get_reward("speed")


def test_reward_result_range():
    assert RewardResult(None).unscored
    with pytest.raises(ValueError):
        RewardResult(1.5)
    with pytest.raises(ValueError):
        RewardResult(float("nan"))


def test_format_value_shapes():
    val = make_sample("needle_qa", {"type": "value", "value": "12"}, n_clips=3)
    assert format_reward(val, "Eleven.").score == 1.0  # wrong, well-formed
    assert format_reward(val, "11 or 12").info["failed"] == ["one_answer"]  # hedge
    assert format_reward(val, "x").info["failed"] == ["one_answer"]  # no number for a numeric value
    fact = make_sample("factual_consistency", {"type": "value", "value": "31", "clips": [1, 2]}, n_clips=3)
    assert format_reward(fact, "31, in clips 1 and 2").score == 1.0
    assert format_reward(fact, "31").info["failed"] == ["one_answer"]  # the key asks which clips too
