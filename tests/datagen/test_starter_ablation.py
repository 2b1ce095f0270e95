"""The starter ablation curriculum (datagen/tasks/starter_ablation.py): the key is the set of clips whose decoded audio
holds a beep; paraphrase families share their clips byte for byte and differ in wording; the demo's starter preset
is unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.audio import SR, decode
from datagen.config import DatagenConfig
from datagen.generate import make_item, n_clips_for
from datagen.tasks.base import Context
from datagen.tasks.starter import STARTER_TASKS
from datagen.tasks.starter_ablation import PARAPHRASES, answer_space, answer_text, paraphrase_family
from rewards.verifiers import verify

N = 16  # items: 8 families of 2


@pytest.fixture(scope="module")
def samples():
    cfg = DatagenConfig(preset="starter_ablation", min_clips=3, max_clips=4)
    cfg.validate()
    ctx = Context(cfg, "bench")
    out = []
    for i in range(N):
        r = make_item(ctx, "temporal_grounding", i)
        assert r.sample is not None, f"#{i}: {r.reason}: {r.detail}"
        out.append(r.sample)
    return out


def _beeping(s) -> list[int]:
    """Clips whose 20 ms frames ever rise far above silence, read from the decoded audio."""
    out = []
    for i, c in enumerate(s.clips, 1):
        x = decode(c.audio)[0]
        n = int(0.02 * SR)
        rms = [float(np.sqrt(np.mean(np.square(x[j: j + n], dtype=np.float64)))) for j in range(0, x.size - n + 1, n)]
        if max(rms) > 0.05:
            out.append(i)
    return out


def test_presets_select_the_task_and_starter_stays_as_it_was():
    assert DatagenConfig(preset="starter_ablation").task_list() == ["temporal_grounding"]
    assert DatagenConfig(curriculum="starter_ablation").task_list() == ["temporal_grounding"]
    assert DatagenConfig(preset="starter").task_list() == list(STARTER_TASKS)
    assert paraphrase_family(DatagenConfig(preset="starter", min_clips=2, max_clips=3), "temporal_grounding", 5) is None


@pytest.mark.parametrize("index, want", [(0, (0, 0)), (1, (1, 0)), (2, (0, 1)), (3, (1, 1)), (4, (2, 0)), (6, (2, 1)),
                                         (9, (5, 0)), (11, (5, 1))])
def test_family_layout_table(index, want):
    cfg = DatagenConfig(preset="starter_ablation", min_clips=3, max_clips=4)
    assert PARAPHRASES == 2 and paraphrase_family(cfg, "temporal_grounding", index) == want
    fam, _ = want
    assert n_clips_for(index, 3, 4) == n_clips_for(fam, 3, 4)  # every member has the family's clip count


def test_key_is_the_set_of_beeping_clips_read_from_the_audio(samples):
    sizes = set()
    for s in samples:
        assert s.key["type"] == "clips" and s.key["value"] == _beeping(s) == s.relevant_clips, s.id
        assert s.answer == answer_text(s.key["value"]) and verify(s, s.answer).score == 1.0
        assert 1 <= len(s.key["value"]) <= 2 and len(s.clips) in (3, 4)
        assert len(s.metadata["answer_space"]) == len(answer_space(len(s.clips))) == {3: 6, 4: 10}[len(s.clips)]
        sizes.add(len(s.key["value"]))
    assert sizes == {1, 2}


def test_paraphrase_families_share_clips_and_differ_in_wording(samples):
    fams: dict[str, list] = {}
    for s in samples:
        fams.setdefault(s.metadata["family"], []).append(s)
    assert len(fams) == N // PARAPHRASES
    for members in fams.values():
        assert sorted(m.metadata["paraphrase"] for m in members) == list(range(PARAPHRASES))
        assert len({tuple(c.audio for c in m.clips) for m in members}) == 1   # the same bytes, in the same order
        assert len({m.question for m in members}) == PARAPHRASES
        assert len({str(m.key) for m in members}) == 1
    assert answer_text([2]) == "Clip 2." and answer_text([1, 3]) == "Clips 1 and 3."
