"""The weighted total, correctness modes (rule / judge / both against a real local HTTP judge), unscored
handling, and the ablation configs (each loads and changes the weights, and so the totals)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from polyaudio_rl.core.schema import TASKS
from polyaudio_rl.core.config import ConfigError, load_config
from polyaudio_rl.core.config.reward import DEFAULT_WEIGHTS, JudgeConfig, RewardConfig
from rewards.scorer import Group, RewardScorer, TooManyUnscored


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


task_batch = _load("task_batch")
judge_server_helper = _load("judge_server_helper")
ROOT = Path(__file__).resolve().parents[2]
ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


def test_every_task_right_answer_scores_one_and_garbage_zero():
    groups = task_batch.task_groups(Group)
    batch = RewardScorer(RewardConfig()).score_batch(groups)
    assert [g.task for g in batch.groups] == list(TASKS)
    for g in batch.groups:
        assert g.components["correctness"][0] == 1.0, (g.task, g.info[0])
        assert g.components["correctness"][1] == 0.0, (g.task, g.info[1])
        assert g.components["correctness"][3] == 0.0, (g.task, g.info[3])
        assert g.components["format"][3] < 1.0
    hedges = {g.task: g.components["correctness"][2] for g in batch.groups}
    # hedging/listing earns nothing, except keyword F1 (1 right of 4 listed: P=1/4, R=1 -> 0.4) and a caption
    # naming one of two keywords (recall 1/2)
    assert hedges == {**{t: 0.0 for t in TASKS}, "common_keyword": pytest.approx(0.4), "captioning": 0.5}
    assert batch.n_unscored == 0 and batch.n_items == 44
    assert set(batch.per_task_means()) == set(TASKS)


def test_total_is_the_weighted_sum():
    groups = task_batch.task_groups(Group)
    cfg = RewardConfig(weights={"correctness": 1.0, "parsimony": 0.5, "consistency": 0.25, "format": 0.125})
    batch = RewardScorer(cfg).score_batch(groups)
    for g in batch.groups:
        for i, t in enumerate(g.total):
            expected = sum(cfg.weights[k] * g.components[k][i] for k in ("correctness", "parsimony", "consistency", "format"))
            assert t == pytest.approx(expected)
    # hand-computed for the odd_one_out group, completion 0 "The last clip.": correctness 1, parsimony U={4}
    # -> 1, format 4/4, consistency: the others read 1, None(hedge), None -> within (0+0+0)/3 = 0
    odd = batch.groups[TASKS.index("odd_one_out")]
    assert [odd.components[k][0] for k in ("correctness", "parsimony", "format", "consistency")] == [1, 1, 1, 0]
    assert odd.total[0] == pytest.approx(1.0 + 0.5 + 0.125)


def test_judge_and_both_modes_and_a_down_judge():
    with judge_server_helper.running_judge() as server:
        s = task_batch.make_sample("odd_one_out", {"type": "clip", "value": 2}, n_clips=3, relevant=[2])
        groups = [Group(s, ["ANSWER-RIGHT Audio 2", "Audio 3"])]
        jc = JudgeConfig(base_url=server.url, model="good", structured_output="none", backoff_s=0.01)
        only = {"correctness": 1.0, "parsimony": 0.0, "consistency": 0.0, "format": 0.0}
        judge = RewardScorer(RewardConfig(correctness_mode="judge", weights=only, judge=jc)).score_batch(groups)
        # right: (5 + 4)/2 = 4.5 -> 0.875; wrong: (1 + 2)/2 = 1.5 -> 0.125
        assert judge.groups[0].components["correctness"] == pytest.approx([0.875, 0.125])
        assert judge.groups[0].components["correctness_rule"] == [1.0, 0.0]  # always logged
        assert judge.groups[0].total == pytest.approx([0.875, 0.125])
        assert judge.judge_stats["requests"] == 4
        both = RewardScorer(RewardConfig(correctness_mode="both", weights=only, judge=jc)).score_batch(groups)
        assert both.groups[0].components["correctness"] == pytest.approx([(1 + 0.875) / 2, (0 + 0.125) / 2])
    # the server is gone now: the judge is down -> unscored, never 0, and the batch check trips
    down = RewardConfig(correctness_mode="judge", judge=JudgeConfig(base_url=server.url, model="good",
                                                                   max_retries=1, backoff_s=0.01))
    batch = RewardScorer(down).score_batch(groups)
    assert batch.groups[0].total == [None, None]
    assert batch.groups[0].components["correctness"] == [None, None]
    assert batch.groups[0].components["parsimony"] == [1.0, 0.0]  # rule components still computed
    assert "connection" in batch.groups[0].info[0]["unscored"]
    assert batch.n_unscored == 2 and batch.unscored_fraction == 1.0
    with pytest.raises(TooManyUnscored, match="2/2 completions unscored"):
        batch.check(0.5)
    # a judge outage does not matter when correctness is off
    off = RewardConfig(correctness_mode="judge", weights={"correctness": 0.0}, judge=down.judge)
    assert RewardScorer(off).score_batch(groups).n_unscored == 0


# ---------------------------------------------------------------------------------------------- ablations
EXPECTED = {
    "no_parsimony.yaml": ("rule", {"parsimony": 0.0}),
    "no_consistency.yaml": ("rule", {"consistency": 0.0}),
    "no_format.yaml": ("rule", {"format": 0.0}),
    "correctness_only.yaml": ("rule", {"parsimony": 0.0, "consistency": 0.0, "format": 0.0}),
    "rule_only.yaml": ("rule", {}),
    "judge_only.yaml": ("judge", {}),
    "rule_and_judge.yaml": ("both", {}),
}


def test_every_ablation_is_tested():
    assert sorted(p.name for p in ABLATIONS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_loads_and_sets_weights(path):
    first = path.read_text().splitlines()
    assert "include: ../tiny_cpu.yaml" in first
    cfg = load_config(path)
    base = load_config()
    mode, changed = EXPECTED[path.name]
    assert cfg.reward.correctness_mode == mode
    assert cfg.reward.weights == {**DEFAULT_WEIGHTS, **changed}
    assert cfg.grpo == base.grpo and cfg.model == base.model  # only the reward section differs
    if mode != "rule":
        assert cfg.reward.judge.base_url.startswith("http://127.0.0.1")


def test_ablations_change_the_totals():
    groups = task_batch.task_groups(Group)
    totals = {}
    for name in ("no_parsimony.yaml", "no_consistency.yaml", "no_format.yaml", "correctness_only.yaml", "rule_only.yaml"):
        cfg = load_config(ROOT / "configs" / "ablations" / name)
        batch = RewardScorer(cfg.reward).score_batch(groups)
        totals[name] = [t for g in batch.groups for t in g.total]
        if name == "correctness_only.yaml":
            assert totals[name] == [c for g in batch.groups for c in g.components["correctness"]]
    assert len({tuple(v) for v in totals.values()}) == len(totals)  # every ablation gives different totals


def test_weight_override_and_errors():
    cfg = load_config(overrides=["reward.weights.parsimony=0"])
    assert cfg.reward.weights == {**DEFAULT_WEIGHTS, "parsimony": 0.0}  # the others keep their defaults
    with pytest.raises(ConfigError, match="speed"):
        load_config(overrides=["reward.weights.speed=1"])
    with pytest.raises(ConfigError, match="needs reward.judge.base_url"):
        load_config(overrides=["reward.correctness_mode=judge"])
    with pytest.raises(ConfigError, match="structured_output"):
        load_config(overrides=["reward.judge.structured_output=xml"])
    with pytest.raises(ConfigError, match="unknown prompt"):
        load_config(overrides=["reward.judge.prompts=[rubric_a, rubric_z]"])
