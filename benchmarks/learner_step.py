"""Learner step speed and memory: SFT and GRPO steps on DeepSpeed workers under Ray, ZeRO-2 vs ZeRO-3.

    python benchmarks/learner_step.py [--config configs/tiny_cpu.yaml] [--workers 2] [--steps 3]
        [--prompts 2 --group-size 4 --clips 3 --completion-len 16] [--zero 2 3] [--cache on off] [key=value ...]

For each (ZeRO stage, audio-embedding cache on/off) a learner group is started on the checkpoint of ``--config``
(default: the tiny one); it runs ``--steps`` GRPO steps (μ = grpo.inner_epochs, KL on) and ``--steps`` SFT steps on
the same synthetic multi-audio batch (``--prompts`` × ``--group-size`` completions of ``--completion-len`` tokens).
The first step of each kind is a warm-up and is not timed. Prints a table of completion tokens/s (per optimizer
pass) and peak memory per worker (process RSS; GPU peak allocated when on GPUs), and writes JSON + PNG to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _batch(processor, n_prompts: int, group: int, n_clips: int, length: int, seed: int = 0):
    from polyaudio_rl.core.batching import TrainItem
    from polyaudio_rl.core.prompts import prompt_from_arrays

    rng = np.random.default_rng(seed)
    sr, items, rewards = 16000, [], []
    vocab = len(processor.tokenizer)
    for i in range(n_prompts):
        audios = []
        for k in range(n_clips):
            t = np.arange(int((1.0 + 0.5 * ((i + k) % 3)) * sr)) / sr
            audios.append((0.3 * np.sin(2 * np.pi * 220.0 * (k + 1 + i) * t)).astype(np.float32))
        p = prompt_from_arrays(f"bench-{i}", f"Which of the {n_clips} clips has the highest pitch?", audios, processor)
        for g in range(group):
            ids = rng.integers(16, vocab, size=length).tolist()
            items.append(TrainItem(p, ids, old_logprobs=(np.full(length, -np.log(vocab))).tolist(), group_id=i))
            rewards.append(float(g % 2))
    return items, rewards


def _run(cfg, stage: str, items, rewards, steps: int) -> list[dict]:
    from actors.learner import Learner
    from polyaudio_rl.driver import group_advantages

    if stage == "grpo":  # the advantages the driver hands over in a training step
        items = group_advantages(items, rewards, cfg.grpo)[0]
    learner = Learner(cfg, stage)
    out = []
    try:
        for _ in range(steps):
            out.append(learner.train_grpo_step(items) if stage == "grpo" else learner.train_sft_step(items))
    finally:
        learner.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="steps per kind (the first one is a warm-up)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--completion-len", type=int, default=16)
    ap.add_argument("--zero", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--cache", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)

    import ray

    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.model import load_processor, resolve_path

    base = load_config(a.config, a.overrides)
    processor = load_processor(resolve_path(base.model))
    items, rewards = _batch(processor, a.prompts, a.group_size, a.clips, a.completion_len)
    ray.init(address="local", num_cpus=max(a.workers, base.ray_num_cpus or 0, 2), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for zero in a.zero:
            for cache in a.cache:
                cfg = load_config(a.config, [*a.overrides, f"learner.num_workers={a.workers}",
                                             f"learner.zero_stage={zero}",
                                             f"learner.cache_audio_embeddings={'true' if cache == 'on' else 'false'}"])
                for stage in ("sft", "grpo"):
                    ms = _run(cfg, stage, items, rewards, a.steps)
                    timed = ms[1:] or ms
                    row = {
                        "stage": stage, "zero": zero, "cache": cache, "workers": a.workers,
                        "tokens_per_step": timed[0]["tokens"],
                        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in timed),
                        "step_s": statistics.median(m["time_s"] for m in timed),
                        "peak_rss_mb_per_worker": [timed[-1][f"peak_rss_mb_w{i}"] for i in range(a.workers)],
                        "peak_gpu_mb_per_worker": [timed[-1].get(f"peak_gpu_mb_w{i}", 0.0) for i in range(a.workers)],
                        "loss_first": ms[0]["loss"], "loss_last": ms[-1]["loss"],
                    }
                    rows.append(row)
                    print(f"{stage:4s} zero={zero} cache={cache:3s}  {row['tokens_per_s']:8.1f} tok/s  "
                          f"step {row['step_s']:6.2f} s  peak RSS/worker (MB) "
                          f"{', '.join(f'{x:.0f}' for x in row['peak_rss_mb_per_worker'])}"
                          + (f"  GPU peak (MB) {', '.join(f'{x:.0f}' for x in row['peak_gpu_mb_per_worker'])}"
                             if any(row["peak_gpu_mb_per_worker"]) else ""), flush=True)
    finally:
        ray.shutdown()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {"model": base.model.path, "prompts": a.prompts, "group_size": a.group_size, "clips": a.clips,
             "completion_len": a.completion_len, "micro_batch_size": base.learner.micro_batch_size,
             "inner_epochs": base.grpo.inner_epochs, "kl_coef": base.grpo.kl_coef}
    (out / "learner_step.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    _plot(rows, out / "learner_step.png")
    print(f"wrote {out / 'learner_step.json'} and {out / 'learner_step.png'}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['stage']}\nZ{r['zero']} cache {r['cache']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows)), 3.5))
    ax1.bar(labels, [r["tokens_per_s"] for r in rows], color="tab:blue")
    ax1.set_ylabel("completion tokens / s")
    ax2.bar(labels, [max(r["peak_rss_mb_per_worker"]) for r in rows], color="tab:orange")
    ax2.set_ylabel("peak RSS per worker (MB)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("learner step (DeepSpeed workers under Ray)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
