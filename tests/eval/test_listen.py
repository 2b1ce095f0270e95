"""eval.listen: the "does it listen" controls. Keys remap by hand-computed tables; an answerer that reads the audio
falls to 0 on silence and keeps its accuracy on shuffled clips, one that answers from the text alone does not."""
from __future__ import annotations

import numpy as np
import pytest

from eval.listen import control_prompts, non_identity_order, remap_key, run_controls, shuffle_prompt, silence_prompt
from polyaudio_rl.core.prompts import MultiAudioPrompt
from polyaudio_rl.core.schema import Clip, Sample

NEW = {1: 3, 2: 1, 3: 2}  # old clip -> new position


@pytest.mark.parametrize("key, want", [
    ({"type": "clip", "value": 1}, {"type": "clip", "value": 3}),
    ({"type": "clips", "value": [1, 3]}, {"type": "clips", "value": [2, 3]}),
    ({"type": "permutation", "value": [2, 3, 1]}, {"type": "permutation", "value": [1, 2, 3]}),
    ({"type": "interval", "clip": 2, "start": 0.1, "end": 0.4}, {"type": "interval", "clip": 1, "start": 0.1, "end": 0.4}),
    ({"type": "value", "value": "31", "clips": [1, 2]}, {"type": "value", "value": "31", "clips": [1, 3]}),
    ({"type": "count", "value": 2}, {"type": "count", "value": 2}),
    ({"type": "yesno", "value": "Yes"}, {"type": "yesno", "value": "Yes"}),
])
def test_remap_key_table(key, want):
    assert remap_key(key, NEW) == want


def test_non_identity_order_is_a_permutation_and_never_the_identity():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4):
        for _ in range(20):
            o = non_identity_order(n, rng)
            assert sorted(o) == list(range(n)) and o != list(range(n))
    with pytest.raises(ValueError, match="at least 2 clips"):
        non_identity_order(1, rng)


def _beep_prompt(sid: str, beeping: list[int], n: int = 3, question: str = "Which clips contain a beep?"):
    sr = 16000
    audios = []
    for i in range(1, n + 1):
        a = np.zeros(sr, dtype=np.float32)
        if i in beeping:
            a[4000:8800] = 0.4 * np.sin(2 * np.pi * 1000 * np.arange(4800) / sr)
        audios.append(a)
    clips = [Clip(b"c%d" % i, sr, 1.0, f"c{i}", "CC0") for i in range(n)]
    s = Sample(id=sid, task="temporal_grounding", split="bench", clips=clips, question=question, answer="",
               key={"type": "clips", "value": beeping}, relevant_clips=beeping,
               metadata={"answer_space": [[1], [2], [3], [1, 2], [1, 3], [2, 3]]})
    return MultiAudioPrompt(sid, f"<prompt {sid}>", audios, s)


def _listening(prompts, name):
    """Names the clips whose audio is loud (what a listening policy does)."""
    out = []
    for p in prompts:
        loud = [i + 1 for i, a in enumerate(p.audios) if np.abs(a).max() > 0.1]
        out.append("Clips " + " and ".join(map(str, loud)) + "." if loud else "None.")
    return out


def _text_only(originals):
    """Answers every item with its original key whatever the audio (a policy that ignores the audio)."""
    by_text = {p.text: p.sample.key["value"] for p in originals}
    return lambda prompts, name: ["Clips " + " and ".join(map(str, by_text[p.text])) + "." for p in prompts]


def test_silence_and_shuffle_prompts():
    p = _beep_prompt("a", [1, 3])
    sil = silence_prompt(p)
    assert all(not a.any() and a.shape == b.shape for a, b in zip(sil.audios, p.audios))
    assert sil.sample is p.sample and sil.text == p.text
    sh = shuffle_prompt(p, [2, 0, 1])  # new 1 = old 3, new 2 = old 1, new 3 = old 2
    assert [a.max() > 0 for a in sh.audios] == [True, True, False]
    assert sh.sample.key == {"type": "clips", "value": [1, 2]} and sh.sample.relevant_clips == [1, 2]
    assert [c.source_id for c in sh.sample.clips] == ["c2", "c0", "c1"] and p.sample.key["value"] == [1, 3]


def test_controls_tell_a_listening_policy_from_a_text_only_one():
    prompts = [_beep_prompt(f"s{i}", b) for i, b in enumerate([[1], [2, 3], [1, 3], [2], [3], [1, 2]])]
    prompts.append(_beep_prompt("names", [1], question="Does Audio 1 contain a beep?"))  # left out of the shuffle
    prompts.append(_beep_prompt("every", [2], question="Does every clip contain a beep?"))  # the whole set: kept
    assert len(control_prompts(prompts)["shuffle"]) == 7 and len(control_prompts(prompts)["silence"]) == 8
    listens = run_controls(_listening, prompts, seed=3)
    assert listens["silence"] == {"accuracy": 0.0, "n": 8, "chance": pytest.approx(1 / 6)}
    assert listens["shuffle"] == {"accuracy": 1.0, "n": 7}
    deaf = run_controls(_text_only(prompts), prompts, seed=3)
    assert deaf["silence"]["accuracy"] == 1.0     # the same answers with or without audio
    # remapped keys: an old answer is right only where the shuffle happened to keep the beeping set in place
    shuffled = control_prompts(prompts, 3)["shuffle"]
    kept = [p.sample.key == next(o for o in prompts if o.text == p.text).sample.key for p in shuffled]
    assert deaf["shuffle"]["accuracy"] == pytest.approx(sum(kept) / 7) and sum(kept) < 7
