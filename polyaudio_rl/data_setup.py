"""The run's data: build the train/pref/bench splits with datagen when missing (and check an existing split holds
the configured tasks), the held-out prompts of the before/after evaluation, and the chance level they are read
against."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .core.config import Config, ConfigError


def check_built_tasks(cfg: Config, split: str, d: str) -> None:
    """An existing split must hold the tasks the config names (``data.tasks``, or the starter curriculum's), by its
    ``datacard.json`` counts: data built by an older curriculum or for other tasks is an error that names the
    directory, never silently trained on. With no tasks named, any subset of the eleven is fine (a filter)."""
    from datagen.tasks.starter import STARTER_TASKS

    want = set(cfg.data.tasks) or (set(STARTER_TASKS) if cfg.data.preset == "starter" else set())
    card = Path(d) / "datacard.json"
    if not want or not card.is_file():
        return
    have = set(json.loads(card.read_text()).get("counts", {}))
    if have and not want <= have:
        raise ConfigError(f"data.{split}_dir={d!r} was built for tasks {sorted(have)}, but the config asks for "
                          f"{sorted(want)} (missing {sorted(want - have)}): remove the directory to rebuild it, or "
                          f"point data.{split}_dir elsewhere")


def datagen_config(cfg: Config) -> Any:
    """The datagen configuration a missing split of ``cfg`` is built with (seeded by ``data.seed``, not ``seed``)."""
    from datagen.config import DatagenConfig

    dcfg = DatagenConfig(preset=cfg.data.preset, seed=cfg.data.seed, tasks=list(cfg.data.tasks),
                         min_clips=cfg.data.min_clips, max_clips=cfg.data.max_clips)
    dcfg.validate()
    return dcfg


def ensure_data(cfg: Config, console: Any = None) -> None:
    """Build the train/pref/bench splits with datagen when a directory has no shards and building is allowed."""
    from datagen.build import interrupted
    from polyaudio_rl.core.schema import shard_paths

    say = console.print if console is not None else print

    for split, d in (("train", cfg.data.train_dir), ("pref", cfg.data.pref_dir), ("bench", cfg.data.bench_dir)):
        if shard_paths(d) and not interrupted(d):  # an interrupted build is completed (resumed) below
            check_built_tasks(cfg, split, d)
            say(f"   {split}: {d} (exists)")
            continue
        if not cfg.data.build_if_missing:
            raise FileNotFoundError(f"data.{split}_dir={d!r} has no Parquet shards and data.build_if_missing is false")
        from datagen.build import build, format_report

        dcfg = datagen_config(cfg)
        quiet = console is not None and console.quiet
        rep = build(dcfg, split, d, progress=not quiet)
        if console is not None:
            console.log("data", format_report(rep))
        else:
            print(format_report(rep))
        say(f"   {split}: built {rep.written} items ({', '.join(sorted(rep.counts))}) in {rep.seconds:.1f} s -> {d}"
            + (f"; {sum(rep.rejects.values())} skipped" if rep.rejects else ""))


def held_out_prompts(cfg: Config, processor: Any, limit: int) -> list[Any]:
    """The bench split's first ``limit`` prompts (of the configured tasks) for the before/after evaluation."""
    from polyaudio_rl.core.schema import read_samples

    from .core.prompts import PromptError, build_prompt_from_config

    out = []
    for s in read_samples(cfg.data.bench_dir):
        if cfg.data.tasks and s.task not in cfg.data.tasks:
            continue
        try:
            out.append(build_prompt_from_config(s, processor, cfg.data))
        except (PromptError, ValueError) as exc:
            print(f"[train] eval: skipping {exc}", file=sys.stderr)  # a bad held-out item is worth seeing
        if len(out) >= limit:
            break
    return out


def chance_level(samples: list[Any]) -> float | None:
    """Expected accuracy of a uniform guess over each item's answer space (:func:`eval.heldout_metrics.chance_level`)."""
    from eval.heldout_metrics import chance_level as chance

    return chance(samples)
