"""Stage 1: LoRA SFT on the train split (paper §4.1.3), on the same DeepSpeed learner workers as GRPO.

    python -m polyaudio_rl.sft --config configs/tiny_cpu.yaml [--resume RUN/checkpoints/step-000010] [key=value ...]

Each sample becomes ``prompt (chat template, one audio part per clip) + answer + <|im_end|>``; the loss is the
NLL of the answer tokens only (token-mean over the global batch). Data order is a seeded permutation per epoch;
the position (epoch, index) goes into every checkpoint, so ``--resume`` continues with the next batch exactly.
Samples that cannot become prompts (bad audio, too many clips, ...) are skipped, counted and reported.
Writes ``<run_dir>/sft_metrics.jsonl`` (through :class:`~polyaudio_rl.core.metrics.MetricsLogger`, so wandb too),
``<run_dir>/sft_loss.png`` and ``<run_dir>/checkpoints/step-NNNNNN``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .core.config import Config, ConfigError, load_config, to_dict
from .core.batching import TrainItem

ANSWER_END = "<|im_end|>"


def sft_target_ids(sample: Any, processor: Any, answer_tag: bool = False) -> list[int]:
    """Token ids of the assistant answer (the only tokens with loss) followed by ``<|im_end|>``."""
    answer = sample.answer.strip()
    if not answer:
        raise ValueError(f"sample {sample.id}: empty answer (nothing to train on)")
    if answer_tag:
        answer = f"<answer>{answer}</answer>"
    end = getattr(processor, "end_of_turn", ANSWER_END)  # a family whose turns end otherwise says so (Voxtral: </s>)
    ids = processor.tokenizer(answer + end, add_special_tokens=False)["input_ids"]
    return list(ids)


def load_train_split(cfg: Config) -> list[Any]:
    """The train split's samples; built with ``datagen`` first when missing and ``data.build_if_missing``."""
    from polyaudio_rl.core.schema import read_samples, shard_paths

    d = cfg.data.train_dir
    if not shard_paths(d):
        if not cfg.data.build_if_missing:
            raise FileNotFoundError(f"data.train_dir {d!r} has no *.parquet shards; run `python -m datagen build "
                                    f"--split train --out {d}` or set data.build_if_missing=true")
        from datagen.build import build

        from .data_setup import datagen_config

        build(datagen_config(cfg), "train", d)
    samples = read_samples(d)
    if cfg.data.tasks:
        samples = [s for s in samples if s.task in set(cfg.data.tasks)]
    if not samples:
        raise ValueError(f"data.train_dir {d!r}: no samples (after the data.tasks filter {cfg.data.tasks})")
    return samples


def batches(n: int, batch_size: int, seed: int, start_epoch: int, start_index: int, epochs: int
            ) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, index after this batch, sample indices) in a seeded order per epoch, from a saved position."""
    for epoch in range(start_epoch, epochs):
        order = np.random.default_rng(seed + epoch).permutation(n).tolist()
        i = start_index if epoch == start_epoch else 0
        while i < n:
            chunk = order[i : i + batch_size]
            i += len(chunk)
            yield epoch, i, chunk


def run_sft(cfg: Config, resume_from: str | None = None, progress: bool = True, console: Any = None
            ) -> dict[str, Any]:
    """Train; returns {"steps", "last_metrics", "checkpoint", "skipped"}. Ray must be reachable (local by default).
    With a :class:`~polyaudio_rl.console.Console` the progress bar and the closing line go through it."""
    from actors.learner import Learner

    from .core.metrics import MetricsLogger, plot_curves
    from .core.model import load_processor, resolve_path

    run_dir = Path(cfg.run_dir or f"runs/sft-{time.strftime('%Y%m%d-%H%M%S')}")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    samples = load_train_split(cfg)
    processor = load_processor(resolve_path(cfg.model))
    total = -(-len(samples) // cfg.sft.batch_size) * cfg.sft.epochs
    if cfg.sft.max_steps:
        total = min(total, cfg.sft.max_steps)
    learner = Learner(cfg, stage="sft", resume_from=resume_from, total_steps=total)  # total: the LR schedule's end
    skipped: dict[str, str] = dict(learner.client_state.get("skipped", {}))
    # resumed: the rows (and wandb steps) logged after the checkpoint are cut; those steps are redone identically
    logger = MetricsLogger(run_dir, to_dict(cfg), cfg.wandb_mode, resume_step=learner.step if resume_from else None,
                           filename="sft_metrics.jsonl", name=f"{run_dir.parent.name}-{run_dir.name}")
    bar = _progress_bar(total, learner.step, progress, console)
    try:
        history, ckpt = _train(cfg, learner, samples, processor, skipped, logger, bar, run_dir)
    finally:
        bar.close()
        logger.close()
        learner.shutdown()
    if skipped:
        print(f"sft: skipped {len(skipped)} bad samples, e.g. {next(iter(skipped.items()))}", file=sys.stderr)
    if history:
        plot_curves(logger.path, run_dir / "sft_loss.png", keys=("loss",), title="LoRA SFT (answer-token NLL)",
                    phase="sft")
        if console is not None:
            console.print(f"   sft: {len(history)} steps, answer NLL {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}"
                          f" ({len(samples)} items; checkpoint {ckpt})")
    return {"steps": learner.step, "last_metrics": history[-1] if history else {}, "checkpoint": ckpt,
            "skipped": skipped, "run_dir": str(run_dir)}


def _progress_bar(total: int, initial: int, progress: bool, console: Any) -> Any:
    if console is not None and progress:
        return console.bar(total, "sft", initial=initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="sft", disable=not progress)


def _train(cfg: Config, learner: Any, samples: list[Any], processor: Any, skipped: dict[str, str], logger: Any,
           bar: Any, run_dir: Path) -> tuple[list[dict[str, float]], str | None]:
    """The SFT steps from the learner's data position to ``sft.max_steps`` / the last epoch, a checkpoint every
    ``learner.checkpoint_every`` steps and at the end; returns (metrics per step, last checkpoint)."""
    pos = learner.client_state.get("data_position", {"epoch": 0, "index": 0})
    step = saved_step = learner.step
    position, history, ckpt = pos, [], None

    def save(at_step: int, position: dict[str, int]) -> str:
        nonlocal saved_step
        saved_step = at_step
        state = {"data_position": position, "skipped": skipped}
        return learner.save_checkpoint(str(run_dir / "checkpoints" / f"step-{at_step:06d}"), state)

    for epoch, index, chunk in batches(len(samples), cfg.sft.batch_size, cfg.seed, pos["epoch"], pos["index"],
                                       cfg.sft.epochs):
        if cfg.sft.max_steps and step >= cfg.sft.max_steps:
            break
        items = _train_items([samples[k] for k in chunk], processor, cfg, skipped)
        if not items:
            continue
        m = learner.train_sft_step(items)
        step = learner.step
        m.update(epoch=float(epoch), skipped=float(len(skipped)))
        history.append(m)
        logger.log(step, {"phase": "sft", **{k: v for k, v in m.items() if k != "step"}})
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}", skipped=len(skipped), refresh=False)
        done = index >= len(samples)  # the epoch is over: the next batch starts the next one
        position = {"epoch": epoch + 1 if done else epoch, "index": 0 if done else index}
        every = cfg.learner.checkpoint_every
        if every and step % every == 0:
            ckpt = save(step, position)
    if step > saved_step:  # the final state, whatever checkpoint_every says
        ckpt = save(step, position)
    return history, ckpt


def _train_items(chunk: list[Any], processor: Any, cfg: Config, skipped: dict[str, str]) -> list[TrainItem]:
    """The batch's samples as SFT items; a sample that cannot become a prompt is recorded in ``skipped``."""
    from .core.prompts import PromptError, build_prompt_from_config

    items = []
    for s in chunk:
        try:
            prompt = build_prompt_from_config(s, processor, cfg.data)
            items.append(TrainItem(prompt, sft_target_ids(s, processor, cfg.data.answer_tag)))
        except (PromptError, ValueError) as exc:  # AudioError is a ValueError too
            skipped[s.id] = str(exc)
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="LoRA SFT (stage 1) on DeepSpeed learner workers under Ray.")
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("--resume", default=None, help="a checkpoint directory written by this command")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.max_steps=5 learner.zero_stage=3")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as exc:
        print(f"sft: config error: {exc}", file=sys.stderr)
        return 2
    out = run_sft(cfg, resume_from=a.resume)
    print(json.dumps({k: out[k] for k in ("steps", "checkpoint", "run_dir")} | {"last": out["last_metrics"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
