"""Set-of-clips answers ("which clips contain a beep?"): exact vs lenient (recall) correctness, and how clip-parsimony
and the weighted total rank hand-written completions — naming every clip pays under lenient correctness alone, not
once parsimony is on."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from polyaudio_rl.core.config import load_config
from polyaudio_rl.core.config.reward import RewardConfig
from polyaudio_rl.core.schema import SampleError, validate_key
from rewards.format import format_reward
from rewards.parsimony import parsimony
from rewards.scorer import Group, RewardScorer
from rewards.verifiers import verify

_spec = importlib.util.spec_from_file_location("reward_samples", Path(__file__).with_name("reward_samples.py"))
reward_samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_samples)

# 4 clips, clip 2 beeps
S = reward_samples.make_sample("temporal_grounding", {"type": "clips", "value": [2]}, n_clips=4,
                               question="Which clips contain a beep?", relevant=[2])
LENIENT = RewardConfig(clip_set_credit="recall")

# completion: (exact, lenient, parsimony, format with the answer tag)
TABLE = {
    "<answer>Clip 2.</answer>": (1.0, 1.0, 1.0, 1.0),
    "<answer>Clips 1 and 2.</answer>": (0.0, 1.0, 0.5, 1.0),
    "<answer>Clips 1, 2, 3 and 4.</answer>": (0.0, 1.0, 0.25, 1.0),
    "<answer>All four clips.</answer>": (0.0, 1.0, 0.25, 1.0),
    "<answer>Clip 3.</answer>": (0.0, 0.0, 0.0, 1.0),
    "<answer>Clip 2 or clip 3.</answer>": (0.0, 0.0, 0.5, 0.8),   # a hedge earns nothing, and fails one_answer
    "<answer>I hear nothing.</answer>": (0.0, 0.0, 1.0, 0.8),     # no clip named: parsimony is vacuous
    "Clip 2.": (1.0, 1.0, 1.0, 0.8),                              # right, without the tag
    # two answers, the first one's closing tag written as an opening one (what GRPO drifted to on the tiny model):
    # an opening tag ends the answer before it and the last answer counts, so repeating the tag with other clips
    # collects no union of the answers; parsimony reads the whole completion; a stray opening tag fails the tag check
    "<answer>Clip 1.<answer>Clip 2.</answer>": (1.0, 1.0, 0.5, 0.8),
    "<answer>Clip 2.<answer>Clip 1.</answer>": (0.0, 0.0, 0.5, 0.8),  # the union {1, 2} would earn lenient credit
    "<answer>Clip 2.<answer>Clip 1.<answer>": (0.0, 0.0, 0.5, 0.8),   # none closed: the last non-empty answer
    "<answer>Clip 2.<answer>Clip 2.</answer>": (1.0, 1.0, 1.0, 0.8),  # the same answer twice: right, malformed
    "<answer>Clip 2.<answer>": (1.0, 1.0, 1.0, 0.8),                  # no closing tag: the text after the opening one
}


@pytest.mark.parametrize("text", list(TABLE))
def test_exact_lenient_parsimony_format_table(text):
    exact, lenient, pars, fmt = TABLE[text]
    assert verify(S, text).score == exact
    assert verify(S, text, cfg=LENIENT).score == lenient
    assert parsimony(S, text).score == pytest.approx(pars)
    assert format_reward(S, text, answer_tag=True).score == pytest.approx(fmt)


def test_lenient_credit_is_the_recall_of_the_key():
    two = reward_samples.make_sample("temporal_grounding", {"type": "clips", "value": [1, 3]}, n_clips=3,
                                     question="Which clips contain a beep?", relevant=[1, 3])
    assert verify(two, "Clip 1.", cfg=LENIENT).score == 0.5 and verify(two, "Clip 1.").score == 0.0
    assert verify(two, "Clips 1 and 3.").info["parsed"] == [1, 3]


def _totals(weights):
    cfg = RewardConfig(clip_set_credit="recall", weights=weights)
    texts = ["<answer>Clip 2.</answer>", "<answer>Clips 1 and 2.</answer>", "<answer>Clips 1, 2, 3 and 4.</answer>",
             "<answer>Clip 3.</answer>"]
    return RewardScorer(cfg, answer_tag=True).score_batch([Group(S, texts)]).groups[0].total


def test_without_parsimony_naming_every_clip_ties_with_the_exact_answer_with_it_it_loses():
    alone = _totals({"correctness": 1.0, "parsimony": 0.0, "consistency": 0.0, "format": 0.0})
    assert alone == [1.0, 1.0, 1.0, 0.0]  # the lenient judge's failure mode: extra clips cost nothing
    mixed = _totals({"correctness": 1.0, "parsimony": 0.2, "consistency": 0.0, "format": 0.0})
    assert mixed == pytest.approx([1.2, 1.1, 1.05, 0.0])  # 1 + 0.2 * (1, 1/2, 1/4, 0)


def test_clips_key_validation():
    validate_key({"type": "clips", "value": [1, 4]}, 4)
    for bad in ([], [0], [5], [2, 2]):
        with pytest.raises(SampleError, match="set of clips"):
            validate_key({"type": "clips", "value": bad}, 4)
    with pytest.raises(ValueError, match="clip_set_credit"):
        load_config(overrides=["reward.clip_set_credit=lenient"])
