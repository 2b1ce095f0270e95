"""Table tests for the rule verifiers: right, wrong, partly right, garbage, adversarial (hedging, listing all
clips, words vs digits). Expected scores are computed by hand in the comments."""
from __future__ import annotations

import importlib.util
import random
import string
from pathlib import Path

import pytest

from polyaudio_rl.core.schema import Sample
from rewards.registry import RewardError
from rewards.verifiers import kendall_partial, verify

_spec = importlib.util.spec_from_file_location("reward_samples", Path(__file__).with_name("reward_samples.py"))
reward_samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_samples)
make_sample = reward_samples.make_sample

GARBAGE = ["", "   ", "<|im_end|>", "\x00\x01\ufffd", "asdf qwerty", "<answer></answer>", "<think>Audio 2", "??!!..",
           "12345678901234567890" * 5, "<answer>"]


def score(sample: Sample, text: str, **ctx) -> float:
    return verify(sample, text, **ctx).score


# ---------------------------------------------------------------------------------------------- option
OPT = make_sample("comparison", {"type": "option", "value": "B"}, n_clips=3,
                  choices=["a dog barking", "a car horn", "rain on a roof", "a dog barking loudly"])


@pytest.mark.parametrize("text,expected", [
    ("B", 1.0),
    ("(B)", 1.0),
    ("The answer is B.", 1.0),
    ("Option b", 1.0),
    ("<answer>B</answer>", 1.0),
    ("B) a car horn", 1.0),
    ("The difference is a car horn.", 1.0),  # the text of choice B
    ("A", 0.0),
    ("The answer is C.", 0.0),
    ("B, unlike A.", 1.0),  # contrast
    ("B, but possibly A.", 0.0),  # hedge in the contrast part
    ("A or B", 0.0),  # hedge: two letters
    ("(A) (B) (C) (D)", 0.0),  # listing every option
    ("a dog barking loudly", 0.0),  # choice D contains choice A's text: only D counts -> wrong
    ("A dog is heard.", 0.0),  # article 'A' is not an option; no choice text either
    ("The answer is a car horn.", 1.0),  # 'a' is an article here; the text is choice B
    ("the answer is b", 1.0),
    ("<answer>C</answer> wait, <answer>B</answer>", 1.0),  # the last tag counts
])
def test_option(text, expected):
    assert score(OPT, text) == expected


# ---------------------------------------------------------------------------------------------- clip
CLIP = make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=4, question="Which clip does not belong?")
SPEAKER = make_sample("speaker_linking", {"type": "clip", "value": 3}, n_clips=4,
                      question="Which clip has the same speaker as clip 1?")


@pytest.mark.parametrize("sample,text,expected", [
    (CLIP, "Audio 2", 1.0),
    (CLIP, "The second clip is the odd one out.", 1.0),
    (CLIP, "audio clip two", 1.0),
    (CLIP, "<answer>2</answer>", 1.0),  # a bare index in the tag
    (CLIP, "second", 1.0),
    (CLIP, "Audio 3", 0.0),
    (CLIP, "Audio 1 or Audio 2", 0.0),  # hedge
    (CLIP, "It is either clip 2 or clip 4.", 0.0),  # hedge
    (CLIP, "Audio 1, Audio 2, Audio 3 and Audio 4", 0.0),  # listing all clips
    (CLIP, "All four clips sound alike.", 0.0),
    (CLIP, "Clip 2 differs from clips 1, 3 and 4.", 1.0),  # the claim names clip 2; the rest is contrast
    (CLIP, "Clip 2 is the slowest, at about 61 BPM, compared with clip 1 at 133 BPM and clip 3 at 88 BPM.", 1.0),
    (CLIP, "Clip 3 is the slowest, compared with clip 2 at 80 BPM.", 0.0),
    (CLIP, "Audio 2, but it could also be Audio 3.", 0.0),  # the contrast part hedges
    (CLIP, "Audio 1. Audio 2. Audio 3. Audio 4.", 0.0),  # listing without a contrast is still listing
    (CLIP, "Clips 1 and 2 differ from clip 3.", 0.0),  # the claim names two clips
    (CLIP, "Audio 7", 0.0),  # out of range
    (CLIP, "Reasoning: audio 1 is speech.\n\nThe answer is the 2nd recording.", 1.0),  # final statement + cue
    (SPEAKER, "Clip 3 has the same speaker as clip 1.", 1.0),  # clip 1 is named by the question
    (SPEAKER, "Clip 1.", 0.0),
    (SPEAKER, "the last clip", 0.0),  # last = 4
])
def test_clip(sample, text, expected):
    assert score(sample, text) == expected


# ---------------------------------------------------------------------------------------------- yes / no
def yn(v):
    return make_sample("entailment", {"type": "yesno", "value": v}, n_clips=3)


@pytest.mark.parametrize("gold,text,expected", [
    ("Yes", "Yes, the third clip supports it.", 1.0),
    ("Yes", "yes", 1.0),
    ("Yes", "No, it contradicts the claim.", 0.0),
    ("No", "No, there is no rain in clip 3.", 1.0),
    ("No", "Yes, there is no doubt.", 0.0),  # the leading word decides
    ("Not enough information", "Not enough information, the clips do not say.", 1.0),
    ("Not enough information", "It cannot be determined from the clips.", 1.0),
    ("Not enough information", "No.", 0.0),
    ("Yes", "Maybe yes, maybe no.", 0.0),  # hedge: two classes
    ("Yes", "The statement is supported.", 0.0),  # no class word
])
def test_yesno(gold, text, expected):
    assert score(yn(gold), text) == expected


# ---------------------------------------------------------------------------------------------- permutation
PERM = make_sample("chronological_ordering", {"type": "permutation", "value": [3, 1, 2]}, n_clips=3)
PERM4 = make_sample("chronological_ordering", {"type": "permutation", "value": [2, 4, 1, 3]}, n_clips=4)


@pytest.mark.parametrize("sample,text,expected", [
    (PERM, "Audio 3 came first, then Audio 1, then Audio 2.", 1.0),
    (PERM, "<answer>3, 1, 2</answer>", 1.0),
    (PERM, "The order is: the third clip, the first clip, the second clip.", 1.0),
    (PERM, "three, one, two", 1.0),  # words
    (PERM, "First Audio 3, then Audio 1, and finally Audio 2.", 1.0),  # "First Audio 3" is Audio 3, not clip 1
    (PERM, "1. Audio 3\n2. Audio 1\n3. Audio 2", 1.0),  # a numbered list
    (PERM, "Audio 3 → Audio 1 → Audio 2", 1.0),
    # one adjacent swap [1,3,2]: gold pairs (3,1) D, (3,2) C, (1,2) C -> (2-1)/3 = 1/3
    (PERM, "1, 3, 2", 1 / 3),
    (PERM, "2, 1, 3", 0.0),  # reversed: tau = -1 -> max(0, .) = 0
    # only two clips named [3,1]: pair (3,1) C, others missing -> 1/3
    (PERM, "Audio 3 then Audio 1", 1 / 3),
    (PERM, "Audio 3, Audio 1, Audio 2, Audio 4", 0.0),  # a clip outside the key
    (PERM, "Audio 3 or Audio 1 first, then Audio 2", 0.0),  # hedge
    # [2,4,3,1] vs gold [2,4,1,3]: pairs (2,4)C (2,1)C (2,3)C (4,1)C (4,3)C (1,3)D -> (5-1)/6 = 2/3
    (PERM4, "clips 2, 4, 3, 1", 2 / 3),
])
def test_permutation(sample, text, expected):
    assert score(sample, text) == pytest.approx(expected)


def test_permutation_exact_only():
    assert score(PERM, "1, 3, 2", permutation_partial=False) == 0.0


def test_kendall_partial_table():
    assert kendall_partial([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_partial([3, 2, 1], [1, 2, 3]) == -1.0
    assert kendall_partial([2, 1], [1, 2]) == -1.0
    assert kendall_partial([1], [1, 2, 3]) == 0.0


# ---------------------------------------------------------------------------------------------- count
COUNT = make_sample("counting", {"type": "count", "value": 4, "tolerance": 0}, n_clips=3)
COUNT_ZERO = make_sample("counting", {"type": "count", "value": 0}, n_clips=2)
COUNT_TOL = make_sample("counting", {"type": "count", "value": 4, "tolerance": 1}, n_clips=3)


@pytest.mark.parametrize("sample,text,expected", [
    (COUNT, "4", 1.0),
    (COUNT, "The dog barks four times across all three clips.", 1.0),  # words; "three clips" is not the count
    (COUNT, "There are 4 barks in total.", 1.0),
    (COUNT, "Clip 1 has 2 barks and clip 3 has 2 barks, so 4 in total.", 1.0),  # the number before "in total"
    (COUNT, "Altogether 4 barks: 2 in clip 1, 0 in clip 2 and 2 in clip 3.", 1.0),  # a per-clip breakdown
    (COUNT, "five", 0.0),
    (COUNT, "3 or 4", 0.0),  # hedge
    (COUNT, "3-5 times", 0.0),  # a range is a hedge
    (COUNT, "4 times, or maybe 5.", 0.0),  # hedge with words between
    (COUNT, "I think 4, possibly 3.", 0.0),
    (COUNT, "Audio 4", 0.0),  # a clip index is not a count
    (COUNT, "The dog barks twice.", 0.0),
    (COUNT_TOL, "5 times", 1.0),  # within tolerance 1
    (COUNT_ZERO, "It never occurs.", 1.0),
    (COUNT_ZERO, "zero times", 1.0),
    (COUNT, "It never occurs.", 0.0),
    (COUNT_TOL, "6 times", 0.0),
])
def test_count(sample, text, expected):
    assert score(sample, text) == expected


# ---------------------------------------------------------------------------------------------- interval
INTV = make_sample("temporal_grounding", {"type": "interval", "clip": 2, "start": 1.0, "end": 3.0}, n_clips=3,
                   question="In which clip does the car pass, and when?")
INTV_Q = make_sample("temporal_grounding", {"type": "interval", "clip": 2, "start": 1.0, "end": 3.0}, n_clips=3,
                     question="When does the car pass in clip 2?")


@pytest.mark.parametrize("sample,text,expected", [
    (INTV, "In clip 2, from 1.0 s to 3.0 s.", 1.0),
    (INTV, "Audio 2, between 1 and 3 seconds", 1.0),
    (INTV, "the second clip, 1000 ms - 3000 ms", 1.0),
    (INTV, "Clip 2 at 0:01.0 to 0:03.0", 1.0),
    (INTV, "In clip 2 from 2 s to 4 s", 1 / 3),  # inter [2,3]=1, union [1,4]=3
    (INTV, "In clip 2 from 1.5 to 2.5 seconds", 0.5),  # inter 1, union 2
    (INTV, "In clip 2 from 1.04 s to 2.97 s", 1.0),  # both ends within the 0.05 s tolerance (rounded times)
    (INTV, "In clip 2 from 1.1 s to 3.0 s", 0.95),  # start off by 0.1 > 0.05: IoU = 1.9 / 2
    (INTV, "In clip 3 from 1 s to 3 s", 0.0),  # wrong clip
    (INTV, "Clip 1 or clip 2, from 1 to 3 s", 0.0),  # hedge
    (INTV, "From 1 s to 3 s.", 0.0),  # no clip named and the question names none
    (INTV, "Clip 2 at 1 s", 0.0),  # one time only
    (INTV, "In clip 2 from one to three seconds", 1.0),  # words
    (INTV_Q, "From 1 s to 3 s.", 1.0),  # the question names clip 2
])
def test_interval(sample, text, expected):
    assert score(sample, text) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- keywords
KW = make_sample("common_keyword", {"type": "keywords", "value": ["river", "lantern"]}, n_clips=3)
KWP = make_sample("common_keyword", {"type": "keywords", "value": ["device connect tone", "trash emptied", "sound"]},
                  n_clips=2)
KW3 = make_sample("common_keyword", {"type": "keywords", "value": ["seven", "ice cream"]}, n_clips=3)


@pytest.mark.parametrize("sample,text,expected", [
    (KW, "river, lantern", 1.0),
    (KW, "The common keywords across all three clips are rivers and lanterns.", 1.0),  # meta words + plurals
    (KW, "river", 2 / 3),  # P=1, R=1/2 -> F1 = 2/3
    (KW, "river, boat", 0.5),  # P=1/2, R=1/2
    (KW, "river lantern boat bridge moon sun", 0.5),  # listing: P=2/6, R=1 -> F1 = 0.5
    (KW, "boat", 0.0),
    (KW3, "7 and ice cream", 1.0),  # digits vs words, a two-word keyword
    (KW3, "ice", 0.0),  # half a phrase is not the keyword
    (KWP, "device connection tones and trash-emptying sounds", 1.0),  # stems: connection~connect, emptying~emptied
])
def test_keywords(sample, text, expected):
    assert score(sample, text) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- value
VAL = make_sample("needle_qa", {"type": "value", "value": "42", "aliases": ["forty-two"]}, n_clips=3)
NAME = make_sample("speaker_linking", {"type": "value", "value": "Alice Smith", "aliases": ["Alice"]}, n_clips=3)
FACT = make_sample("factual_consistency", {"type": "value", "value": "42", "clips": [1, 3]}, n_clips=3,
                   relevant=[1, 2, 3])


@pytest.mark.parametrize("sample,text,expected", [
    (VAL, "42", 1.0),
    (VAL, "Forty-two.", 1.0),  # words vs digits
    (VAL, "The speaker says the number is forty two.", 1.0),
    (VAL, "43", 0.0),
    (VAL, "42 or 43", 0.0),  # hedge
    (VAL, "42, maybe 43", 0.0),
    (VAL, "40, 41, 42, 43", 0.0),  # listing numbers
    (VAL, "Audio 2 says 42.", 1.0),  # the clip index 2 is not a value
    (NAME, "It is alice.", 1.0),  # alias, case
    (NAME, "ALICE SMITH!", 1.0),
    (NAME, "Bob or Alice", 0.0),  # hedge
    (NAME, "Bob", 0.0),
    # factual consistency: value and clips. Right value, clips {1,3}: 1.0
    (FACT, "The correct age is 42, stated in clips 1 and 3.", 1.0),
    # right value, clips {1,2,3}: P=2/3 R=1 F1=0.8 -> 0.5 + 0.4 = 0.9
    (FACT, "The age is 42; clips 1, 2 and 3 mention an age.", 0.9),
    # wrong value, clips {1,3} right: 0.5
    (FACT, "The correct age is 45, stated in clips 1 and 3.", 0.5),
    # right value, no clips: 0.5
    (FACT, "forty-two", 0.5),
    # the contrast part may name other clips and values (a datagen reference answer's shape)
    (FACT, "The correct value is 42, stated in clip 1 and clip 3; by contrast, clip 2 says 50 and 91.", 1.0),
    (FACT, "The correct value is 45, stated in clip 2; by contrast, clips 1 and 3 say 42.", 0.0),
    (VAL, "42, but it might be 45.", 0.0),  # hedge in the contrast part
])
def test_value(sample, text, expected):
    assert score(sample, text) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- caption
CAP = make_sample("captioning", {"type": "caption", "value": "A dog barks while rain falls on a roof.",
                                 "keywords": ["dog", "bark", "rain"]}, n_clips=2)
CAP_SPEECH = make_sample("captioning", {"type": "caption", "value": "Speech, then a bell.", "keywords": ["speech", "bell"]},
                         n_clips=2)
CAP_NOKW = make_sample("captioning", {"type": "caption", "value": "A dog barks.", "keywords": []}, n_clips=2)


@pytest.mark.parametrize("sample,text,expected", [
    (CAP, "A dog barks in the rain.", 1.0),
    (CAP, "A dog is heard.", 1 / 3),
    (CAP, "Traffic noise.", 0.0),
    (CAP_SPEECH, 'A woman says: "the bell rang".', 1.0),  # "says" expresses the category keyword "speech"
    (CAP_SPEECH, "A bell rings.", 0.5),
    # stuffing: ref has 7 normalised words ("dog barks while rain falls on roof"); 3 * 7 = 21 words allowed;
    # the answer has 42 words with all 3 keywords -> 1.0 * 21/42 = 0.5
    (CAP, " ".join(["dog", "bark", "rain"] * 14), 0.5),
    # no keywords: content-word F1 with the reference {dog, bark}: "dog barks loudly" P=2/3 R=1 -> 0.8
    (CAP_NOKW, "dog barks loudly", 0.8),
])
def test_caption(sample, text, expected):
    assert score(sample, text) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- garbage, errors
ALL = [OPT, CLIP, SPEAKER, PERM, COUNT, INTV, KW, VAL, NAME, FACT, CAP, yn("Yes")]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_scores_zero(text):
    for s in ALL:
        r = verify(s, text)
        assert r.score == 0.0, (s.id, text, r.info)


def test_random_text_never_raises():
    rng = random.Random(0)
    alphabet = string.printable + "äé漢<>/"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for s in ALL:
            r = verify(s, text)
            assert 0.0 <= r.score <= 1.0


def test_think_block_is_ignored():
    assert score(CLIP, "<think>maybe Audio 3?</think>Audio 2") == 1.0
    assert score(CLIP, "<think>Audio 2 is odd") == 0.0  # unclosed think: no answer


def test_unknown_task_names_the_sample():
    s = make_sample("counting", {"type": "count", "value": 1}, n_clips=2, sid="bench-x-7")
    s.task = "juggling"
    with pytest.raises(RewardError, match="bench-x-7.*juggling"):
        verify(s, "1")


def test_missing_key_names_the_sample():
    s = make_sample("counting", {"type": "count", "value": 1}, n_clips=2, sid="bench-y-3")
    s.key = {}
    with pytest.raises(RewardError, match="bench-y-3.*no ground-truth key"):
        verify(s, "1")


def test_bad_key_names_the_sample():
    s = make_sample("counting", {"type": "count", "value": 1}, n_clips=2, sid="bench-z-1")
    s.key = {"type": "count", "value": "many"}
    with pytest.raises(RewardError, match="bench-z-1"):
        verify(s, "1")
