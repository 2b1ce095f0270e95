"""Rollout samples and held-out answers kept in the run directory: which steps and groups, clips stored once by
content hash, resumable without duplicates, bounded in size."""
from __future__ import annotations

import json

import numpy as np
import pytest

from polyaudio_rl.core.config.logs import LoggingConfig
from polyaudio_rl.core.webpage import ClipStore
from polyaudio_rl.samples import RolloutSampler, pick_groups, read_jsonl, record_heldout, samples_dir
from tests.polyaudio_rl import report_fixtures as fx


@pytest.mark.parametrize("tasks,k,want", [
    (["a", "a", "b", "c", "b"], 2, [0, 2]),        # one per task first, in batch order
    (["a", "a", "b", "c", "b"], 3, [0, 2, 3]),
    (["a", "a", "b"], 3, [0, 1, 2]),               # then the rest in order
    (["a", "a"], 5, [0, 1]),
    ([], 2, []),
])
def test_pick_groups(tasks, k, want):
    assert pick_groups(tasks, k) == want


def test_demo_defaults_keep_ten_steps_of_two_groups_with_their_rewards_and_advantages(tmp_path):
    fx.rollouts(tmp_path, steps=60)
    recs = read_jsonl(samples_dir(tmp_path) / "rollouts.jsonl")
    assert sorted({r["step"] for r in recs}) == [1, 7, 13, 19, 25, 31, 37, 43, 49, 55]
    assert len(recs) == 20 and all(len(r["completions"]) == 8 for r in recs)
    first = [r for r in recs if r["step"] == 1]
    assert [r["task"] for r in first] == ["counting", "entailment"]  # two tasks, not two groups of one
    b, train_items = fx.batch(1)
    g0 = first[0]
    assert g0["policy_version"] == 0 and g0["group_id"] == b.groups[0].group_id
    assert g0["question"] == "Question 100 about counting?" and g0["reference"] == "3."
    want_adv = [it.advantage for it in train_items if it.group_id == g0["group_id"]]
    assert [c["advantage"] for c in g0["completions"]] == pytest.approx(want_adv)
    assert [c["total"] for c in g0["completions"]] == b.scores.groups[0].total
    assert set(g0["completions"][0]["rewards"]) == {"correctness", "format"}
    assert g0["weights"] == {"correctness": 1.0, "format": 0.0}
    # clips: referenced by hash, each file once, and they decode to the prompt's audio
    import soundfile as sf

    store = ClipStore(samples_dir(tmp_path) / "clips")
    wave, sr = sf.read(store.path(g0["clips"][1]), dtype="float32")
    assert sr == 16000 and np.abs(wave - b.items[0].prompt.audios[1]).max() < 1e-4
    refs = {c for r in recs for c in r["clips"]}
    assert len(list(store.root.iterdir())) == len(refs)


def test_a_group_not_trained_on_has_no_advantage_and_says_why(tmp_path):
    cfg = LoggingConfig(rollout_sample_every=1, rollout_sample_groups=8)
    s = RolloutSampler(tmp_path, cfg)
    assert s(1, *fx.batch(1)) == 8
    recs = read_jsonl(s.path)
    dropped = recs[3]  # the fixture gives no advantages to every fourth group (dynamic sampling dropped it)
    assert all(c["advantage"] is None for c in dropped["completions"]) and "not trained on" in dropped["note"]
    assert all(c["advantage"] is not None for c in recs[0]["completions"]) and recs[0]["note"] == ""


def test_resumed_run_keeps_each_step_once(tmp_path):
    cfg = LoggingConfig(rollout_sample_every=2, rollout_sample_groups=1)
    fx.rollouts(tmp_path, steps=10, cfg=cfg)  # steps 1, 3, 5, 7, 9 written; checkpoint at step 6, then a crash
    s = RolloutSampler(tmp_path, cfg, resume_step=6)  # steps 7, 9 are redone: their records go
    assert sorted(r["step"] for r in read_jsonl(s.path)) == [1, 3, 5]
    for step in range(7, 11):
        s(step, *fx.batch(step))
    s(5, *fx.batch(5))  # a step already kept (e.g. redone after a learner restart) is not written twice
    again = RolloutSampler(tmp_path, cfg)  # reopened without a resume point: nothing dropped
    assert sorted(r["step"] for r in read_jsonl(again.path)) == [1, 3, 5, 7, 9]
    assert not again.wants(9) and again.wants(11)


def test_samples_stop_at_the_size_bound_and_say_so(tmp_path):
    cfg = LoggingConfig(rollout_sample_every=1, rollout_sample_groups=2, rollout_sample_max_mb=0.05)
    for step in range(1, 8):
        RolloutSampler(tmp_path, cfg)(step, *fx.batch(step))  # a new sampler each step: the bound survives reopening
    recs = read_jsonl(samples_dir(tmp_path) / "rollouts.jsonl")
    skipped = [r for r in recs if "skipped" in r]
    assert len(skipped) == 1 and "rollout_sample_max_mb=0.05" in skipped[0]["skipped"]
    kept = {r["step"] for r in recs if "skipped" not in r}
    assert kept and max(kept) < skipped[0]["step"] <= 7
    size = sum(f.stat().st_size for f in samples_dir(tmp_path).rglob("*") if f.is_file())
    assert size < 0.05e6 + 2 * 3 * 30_000  # at most one step (2 groups x 3 clips) past the bound


def test_every_zero_keeps_nothing(tmp_path):
    s = RolloutSampler(tmp_path, LoggingConfig(rollout_sample_every=0))
    assert s(1, *fx.batch(1)) == 0 and not s.path.exists()


def test_heldout_answers_per_phase_replaced_when_recorded_again(tmp_path):
    prompts = [fx.prompt(i, fx.TASKS[i % 3]) for i in range(4)]
    answers = [{"id": p.sample_id, "answer": "Clip 2.", "score": 1.0} for p in prompts]
    record_heldout(tmp_path, "after_sft", prompts, answers)
    record_heldout(tmp_path, "after_grpo", prompts, answers)
    record_heldout(tmp_path, "after_grpo", prompts, [{**a, "answer": "Clip 3.", "score": 0.0} for a in answers])
    recs = read_jsonl(samples_dir(tmp_path) / "heldout.jsonl")
    assert [r["phase"] for r in recs] == ["after_sft"] * 4 + ["after_grpo"] * 4
    assert {r["answer"] for r in recs if r["phase"] == "after_grpo"} == {"Clip 3."}
    assert recs[0]["clips"] == recs[4]["clips"] and len(recs[0]["clips"]) == 3
    assert json.loads(json.dumps(recs[0]))["reference"] == prompts[0].sample.answer


def test_torn_last_line_is_ignored(tmp_path):
    cfg = LoggingConfig(rollout_sample_every=1, rollout_sample_groups=1)
    s = RolloutSampler(tmp_path, cfg)
    s(1, *fx.batch(1))
    with s.path.open("a") as fh:
        fh.write('{"step": 2, "task": "cou')  # a crash mid-write
    assert [r["step"] for r in read_jsonl(s.path)] == [1]
    RolloutSampler(tmp_path, cfg)(3, *fx.batch(3))  # the next record starts on a line of its own
    assert [r["step"] for r in read_jsonl(s.path)] == [1, 3]


def test_a_write_error_ends_the_samples_not_the_run(tmp_path, capsys):
    cfg = LoggingConfig(rollout_sample_every=1, rollout_sample_groups=1)
    s = RolloutSampler(tmp_path, cfg)
    (tmp_path / "samples").write_text("not a directory")  # every write below fails with an OSError
    assert s(1, *fx.batch(1)) == 0 and s(2, *fx.batch(2)) == 0
    assert "rollout samples stopped at step 1" in capsys.readouterr().err


def test_held_out_evaluation_hands_each_answer_and_score_to_the_run_page(tmp_path):
    """eval.heldout.evaluate (what the held-out stage runs) returns ``items``: one answer and rule score per prompt."""
    from types import SimpleNamespace as NS

    from eval.heldout import evaluate

    class Pool:  # the rollout pool's greedy generate: odd_one_out answered right, the others wrong
        def generate(self, prompts, ids, n, greedy):
            return [NS(completions=[NS(text="Clip 2." if p.sample.task == "odd_one_out" else "Clip 9.",
                                       token_ids=[1, 2])]) for p in prompts]

    prompts = [fx.prompt(i, fx.TASKS[i % 3]) for i in range(6)]
    res = evaluate(Pool(), prompts)
    assert [(i["id"], i["answer"], i["score"]) for i in res["items"]] == [
        (p.sample_id, "Clip 2." if p.sample.task == "odd_one_out" else "Clip 9.",
         1.0 if p.sample.task == "odd_one_out" else 0.0) for p in prompts]
    assert res["accuracy"] == pytest.approx(2 / 6) and "scores" not in res
    record_heldout(tmp_path, "after_grpo", prompts, res.pop("items"))
    assert [r["score"] for r in read_jsonl(samples_dir(tmp_path) / "heldout.jsonl")] == [0.0, 0.0, 1.0] * 2
