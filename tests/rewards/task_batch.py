"""One hand-made group per task of Table 2 (G = 4 completions: right, wrong, hedging/listing, garbage), for the
scorer and actor-pool tests. Loaded by path (no packages under tests/)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from polyaudio_rl.core.schema import TASKS

_spec = importlib.util.spec_from_file_location("reward_samples", Path(__file__).with_name("reward_samples.py"))
reward_samples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_samples)
make_sample = reward_samples.make_sample

CASES = {
    "comparison": (dict(key={"type": "option", "value": "B"}, choices=["same source", "different sources"],
                        relevant=[1, 3]), ["(B)", "(A)", "A or B", ""]),
    "temporal_grounding": (dict(key={"type": "interval", "clip": 2, "start": 1.0, "end": 2.0}, relevant=[2]),
                           ["Clip 2, from 1 s to 2 s.", "Clip 3, from 1 s to 2 s.", "Clip 1 or clip 2, 1-2 s", "zzz"]),
    "needle_qa": (dict(key={"type": "value", "value": "12", "aliases": ["twelve"]}, relevant=[3]),
                  ["Twelve birds, said in Audio 3.", "Eleven.", "11 or 12", "<|im_end|>"]),
    "speaker_linking": (dict(key={"type": "clip", "value": 3}, relevant=[1, 3],
                             question="Which clip has the same speaker as clip 1?"),
                        ["Clip 3.", "Clip 2.", "Audio 2, Audio 3 and Audio 4", "..."]),
    "odd_one_out": (dict(key={"type": "clip", "value": 4}, relevant=[1, 2, 3, 4]),
                    ["The last clip.", "The first clip.", "Audio 1 or Audio 4", ""]),
    "entailment": (dict(key={"type": "yesno", "value": "No"}, relevant=[1, 2, 3]),
                   ["No, clip 3 contradicts it.", "Yes.", "Yes or no.", "hmm"]),
    "common_keyword": (dict(key={"type": "keywords", "value": ["lantern"]}),
                       ["lantern", "river", "lantern river boat moon", ""]),
    "chronological_ordering": (dict(key={"type": "permutation", "value": [2, 3, 1, 4]}),
                               ["2, 3, 1, 4", "4, 1, 3, 2", "Audio 2 or Audio 3 first", "?"]),
    "captioning": (dict(key={"type": "caption", "value": "A dog barks and a bell rings.", "keywords": ["dog", "bell"]}),
                   ["A dog barks, then a bell rings.", "Rain falls.", "dog", ""]),
    "factual_consistency": (dict(key={"type": "value", "value": "31", "clips": [1, 2]}, relevant=[1, 2, 3]),
                            ["The age is 31, stated in clips 1 and 2.", "The age is 35, in clip 3.", "31 or 35", "x"]),
    "counting": (dict(key={"type": "count", "value": 3}),
                 ["3 times.", "Five times.", "3 or 4", ""]),
}
assert set(CASES) == set(TASKS)


def task_groups(Group):
    """[(Group(sample, completions))] for every task, in TASKS order."""
    out = []
    for i, task in enumerate(TASKS):
        kw, completions = CASES[task]
        kw = dict(kw)
        s = make_sample(task, n_clips=4, sid=f"pref-{task}-{i}", question=kw.pop("question", "Question?"),
                        answer=f"reference answer for {task}", **kw)
        out.append(Group(s, list(completions)))
    return out
