"""Integration with datagen: the generators' own natural-language reference answers must earn full rule
correctness and a clean format under the verifiers (items with 2 and 5 clips of every task). Clip-parsimony of
the reference is checked too, except for counting (see the note there)."""
from __future__ import annotations

import pytest

from polyaudio_rl.core.schema import TASKS

datagen_build = pytest.importorskip("datagen.build")
from datagen.config import DatagenConfig  # noqa: E402
from datagen.generate import make_item  # noqa: E402
from rewards.format import format_reward  # noqa: E402
from rewards.parsimony import parsimony  # noqa: E402
from rewards.verifiers import verify  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    cfg = DatagenConfig()
    cfg.validate()
    return datagen_build.make_context(cfg, "pref")


@pytest.mark.parametrize("task", TASKS)
def test_reference_answers_score_full_marks(ctx, task):
    checked = 0
    for index in (0, 3):  # clip counts cycle 2..5: index 0 -> 2 clips, index 3 -> 5 clips
        item = make_item(ctx, task, index)
        if item.sample is None:
            continue  # a source the machine lacks; datagen's own tests cover rejects
        s = item.sample
        c = verify(s, s.answer)
        assert c.score == 1.0, (s.id, s.key, s.answer, c.info)
        f = format_reward(s, s.answer)
        assert f.score == 1.0, (s.id, s.answer, f.info)
        p = parsimony(s, s.answer)
        assert p.score == 1.0, (s.id, s.answer, s.relevant_clips, p.info)
        # adversarial answers on the same real sample: nothing, listing every clip, hedging between two clips
        n = len(s.clips)
        assert verify(s, "").score == 0.0
        if s.key["type"] in ("clip", "option", "yesno", "count", "interval"):  # (an order may list all clips)
            listing = ", ".join(f"Audio {i}" for i in range(1, n + 1))
            assert verify(s, listing).score < 1.0, (s.id, listing)
            assert verify(s, "Audio 1 or Audio 2").score == 0.0
        if len(s.relevant_clips) < n:
            assert parsimony(s, ", ".join(f"Audio {i}" for i in range(1, n + 1))).score < 1.0
        checked += 1
    assert checked, f"no {task} item could be generated on this machine"
