"""A synthetic run directory of demo size for the report tests: real generated clips (tones, beeps, noise) written
through :mod:`polyaudio_rl.samples` exactly as a training run writes them, a summary.json, a metrics.jsonl and the
run's PNG curves. No Ray, no model."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from actors.rollout_engine import Completion, RolloutGroup
from polyaudio_rl.core.config.logs import LoggingConfig
from polyaudio_rl.core.prompts import MultiAudioPrompt
from polyaudio_rl.core.schema import Clip, Sample
from polyaudio_rl.samples import RolloutSampler, record_heldout
from rewards.scorer import GroupScores

TASKS = ("counting", "entailment", "odd_one_out")
SR = 16000


def clip(seed: int, seconds: float = 0.8) -> np.ndarray:
    """A distinct short clip: a tone, a beep train or noise, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    kind = seed % 3
    if kind == 0:
        x = 0.3 * np.sin(2 * np.pi * (220 + 37 * (seed % 20)) * t)
    elif kind == 1:
        x = 0.3 * np.sin(2 * np.pi * 880 * t) * ((t * (2 + seed % 4)) % 1 < 0.3)
    else:
        x = 0.1 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def sample(i: int, task: str, split: str = "bench", n_clips: int = 3) -> Sample:
    """A sample as the prompt stream hands it on: clips described, their audio bytes left out."""
    clips = [Clip(b"", SR, 0.8) for _ in range(n_clips)]
    return Sample(id=f"{split}-{task}-{i:04d}", task=task, split=split, clips=clips, question=f"Question {i} about {task}?",
                  answer="Clip 2." if task == "odd_one_out" else ("Yes." if task == "entailment" else "3."),
                  key={"type": "clip", "value": 2}, relevant_clips=[2])


def prompt(i: int, task: str, n_clips: int = 3, split: str = "bench") -> MultiAudioPrompt:
    s = sample(i, task, split, n_clips)
    return MultiAudioPrompt(s.id, "<prompt>", [clip(1000 * (split == "pref") + 3 * i + k) for k in range(n_clips)], s)


def heldout(run_dir: Path, n_items: int = 96) -> list[MultiAudioPrompt]:
    prompts = [prompt(i, TASKS[i % 3], 2 + i % 2) for i in range(n_items)]
    for phase, p_right in (("after_sft", 0.4), ("after_grpo", 0.7)):
        rng = np.random.default_rng(len(phase))
        answers = [{"id": p.sample_id, "answer": f"Clip {1 + i % 3}.", "score": float(rng.random() < p_right)}
                   for i, p in enumerate(prompts)]
        record_heldout(run_dir, phase, prompts, answers)
    return prompts


def batch(step: int, prompts_per_step: int = 8, group_size: int = 8) -> tuple[SimpleNamespace, list[SimpleNamespace]]:
    """One step's scored batch (as the driver holds it) and the learner's items with advantages."""
    rng = np.random.default_rng(step)
    items, groups, scores, train_items = [], [], [], []
    for j in range(prompts_per_step):
        task = TASKS[j % 3]
        p = prompt(step * 100 + j, task, 3, split="pref")
        items.append(SimpleNamespace(position=step * 100 + j, prompt=p, sample=p.sample))
        gid = f"{step}:{j}:{p.sample_id}"
        texts = [f"Clip {1 + int(rng.integers(3))}." for _ in range(group_size)]
        groups.append(RolloutGroup(gid, p.sample_id, step - 1, [Completion([5, 6, 7], [-0.5] * 3, "stop", t)
                                                                for t in texts]))
        corr = [float(t == p.sample.answer) for t in texts]
        scores.append(GroupScores(p.sample_id, task, {"correctness": corr, "format": [1.0] * group_size}, corr, [{}] * group_size))
        if j % 4 != 3:  # every fourth group "dropped by dynamic sampling": no advantages
            mean = sum(corr) / group_size
            train_items += [SimpleNamespace(group_id=gid, advantage=c - mean) for c in corr]
    b = SimpleNamespace(step=step, items=items, groups=groups,
                        scores=SimpleNamespace(groups=scores, weights={"correctness": 1.0, "format": 0.0}))
    return b, train_items


def rollouts(run_dir: Path, steps: int = 60, cfg: LoggingConfig | None = None) -> RolloutSampler:
    sampler = RolloutSampler(run_dir, cfg or LoggingConfig())
    for step in range(1, steps + 1):
        if sampler.wants(step):
            sampler(step, *batch(step))
    return sampler


def summary_and_curves(run_dir: Path, steps: int = 60) -> None:
    from polyaudio_rl.core.metrics import plot_curves

    per = {t: 0.5 for t in TASKS}
    (run_dir / "summary.json").write_text(json.dumps({
        "chance": 0.4, "eval_before": {"accuracy": 0.4, "n": 96, "per_task": per},
        "eval_after": {"accuracy": 0.7, "n": 96, "per_task": per}, "policy_version": steps + 1, "wall_s": 190.0}))
    with (run_dir / "metrics.jsonl").open("w") as fh:
        for s in range(1, steps + 1):
            fh.write(json.dumps({"step": s, "phase": "grpo", "reward/total": s / steps, "reward/correctness": s / steps,
                                 "kl": 0.0}) + "\n")
    plot_curves(run_dir / "metrics.jsonl", run_dir / "reward_curves.png")


def demo_run(run_dir: Path, n_items: int = 96, steps: int = 60) -> Path:
    """A demo-sized run directory: 96 held-out items, 60 GRPO steps with the default sampling."""
    run_dir.mkdir(parents=True, exist_ok=True)
    heldout(run_dir, n_items)
    rollouts(run_dir, steps)
    summary_and_curves(run_dir, steps)
    return run_dir
