"""``python -m polyaudio_rl.train``: the whole run — data, tiny checkpoint, LoRA SFT, GRPO, evaluation.

    python -m polyaudio_rl.train [--config configs/X.yaml] [--run-dir DIR] [--resume RUN_DIR] [key=value ...]
    ray job submit --working-dir . -- python -m polyaudio_rl.train --config configs/qwen2_audio_7b_8xa100.yaml

Connects to a running Ray cluster when there is one (``ray job submit`` sets ``RAY_ADDRESS``; or ``ray_address``
in the config), else starts a local one. With no arguments it runs the embedded default that ``make demo`` runs
(``configs/demo.yaml``: one CPU machine, the tiny checkpoint, datagen's starter curriculum) end to end: builds the
data and the tiny checkpoint if missing, SFT, GRPO between a held-out evaluation before and after, serve + bench, and
writes ``RUN_DIR/metrics.jsonl``, ``RUN_DIR/reward_curves.png``, ``RUN_DIR/summary.json`` and ``RUN_DIR/report.md``.
``configs/tiny_cpu.yaml`` is the same machine on the paper's eleven tasks (the ablations and tests include it).

This module is the command line; the stages live in :mod:`polyaudio_rl.stages`, the data in
:mod:`polyaudio_rl.data_setup`, the closing table in :mod:`polyaudio_rl.summary`, the Ray connection in
:mod:`polyaudio_rl.core.cluster`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from .core.cluster import ResourceError, check_resources, connect_ray
from .core.config import Config, ConfigError, load_config, to_dict
from .core.deaths import RunAborted
from .preemption import StopRequest
from .run_manifest import ManifestError, follow_manifest, mark_stage, read_manifest, start_manifest
from .storage import RunStorage

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # the embedded default: `make demo`

__all__ = ["main", "connect_ray", "run_dir_problem", "DEFAULT_CONFIG", "demo_config"]


def demo_config(overrides: list[str] | tuple[str, ...] = (), default: Path = DEFAULT_CONFIG) -> Path:
    """The embedded default for a run without ``--config``: ``configs/demo_<family>.yaml`` when ``model.path`` (after
    ``overrides``) is a checkpoint of a family that has one — read from its ``config.json``, or, for a tiny checkpoint
    still to be written, ``model.tiny_family`` — else ``configs/demo.yaml``. A family's file states only the demo
    settings that family needs (docs/models.md, "The demo per family"); ``--config`` always wins."""
    from .core.models import family_of

    cfg = load_config(default, overrides)
    path = Path(cfg.model.path)
    if (path / "config.json").is_file():
        family = family_of(str(path)).name
    elif cfg.model.make_tiny_if_missing:
        family = cfg.model.tiny_family
    else:
        return default
    own = default.with_name(f"demo_{family}.yaml")
    return own if own.is_file() else default


def run_dir_problem(run_dir: Path, cwd: Path) -> str | None:
    """Why ``run_dir`` cannot hold a run's results, or None. A ``ray job submit --working-dir`` job runs in Ray's
    temporary copy of the working directory (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``), which Ray
    deletes: a run directory there would lose the metrics, checkpoints and trained adapter."""
    parts = cwd.resolve().parts
    if "runtime_resources" not in parts or not any(p.startswith("_ray_pkg_") for p in parts):
        return None
    target = (cwd / run_dir).resolve()
    if target == cwd.resolve() or cwd.resolve() in target.parents:
        return (f"the run directory {target} lies inside Ray's temporary copy of the job's working directory "
                f"({cwd}), which Ray deletes; give an absolute --run-dir on storage that outlives the job (a shared "
                "filesystem on a cluster), e.g. --run-dir /shared/runs/my-run")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PolyAudio-RL training: LoRA SFT then GRPO (see module docstring)")
    ap.add_argument("--config", default=None,
                    help="YAML config (default configs/demo.yaml, what `make demo` runs; configs/demo_<family>.yaml "
                    "when model.path is a checkpoint of a family that has its own demo settings)")
    ap.add_argument("--run-dir", default=None, help="output directory or pyarrow.fs URI, e.g. file:///shared/runs/x, "
                    "s3://bucket/runs/x (default runs/<timestamp>)")
    ap.add_argument("--resume", default=None, help="a RUN_DIR (path or URI) to continue exactly, as it started (its "
                    "run.json: config, --init-adapter, --skip-sft, stages done)")
    ap.add_argument("--skip-sft", action="store_true", help="start GRPO from the base model (paper's 'GRPO only')")
    ap.add_argument("--init-adapter", default=None,
                    help="start GRPO from this SFT checkpoint (e.g. RUN_DIR/sft/checkpoints/step-N) and skip SFT")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--verbose", action="store_true",
                    help="also show Ray worker output, library logs and warnings live (always in RUN_DIR/logs/)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.group_size=8")
    a = ap.parse_args(argv)
    try:
        if a.resume:
            storage = RunStorage.open(a.resume)
            storage.pull()  # a URI run directory comes back into its local staging copy first
            run_dir = storage.local
            cfg = load_config(run_dir / "config.yaml", a.overrides)
            m = follow_manifest(run_dir, a.config, a.init_adapter, a.skip_sft)  # the run continues as it started
            a.config, a.init_adapter, a.skip_sft = m.config_name, m.init_adapter, m.skip_sft
        else:
            a.config = a.config or str(demo_config(a.overrides))
            cfg = load_config(a.config, a.overrides)
            a.config = _shown(a.config)  # the name the header and run.json show
            storage = RunStorage.open(a.run_dir or cfg.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir = storage.local
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # a run directory URI that cannot be opened / a missing run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = run_dir_problem(run_dir, Path.cwd())
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg.run_dir = str(storage)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not a.resume:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        try:  # run.json: how the run started, what --resume follows
            start_manifest(run_dir, a.config, to_dict(cfg), a.overrides, cfg.seed, a.skip_sft, a.init_adapter)
        except ManifestError as exc:
            print(f"error: --init-adapter: {exc}", file=sys.stderr)
            return 2
    try:
        return _main(cfg, run_dir, storage, a)
    finally:
        if storage.uri is not None:  # also after a SIGTERM stop or a failure: what was written outlives the node
            storage.push()
            print(f"[train] results: {storage.uri} (mirrored from {run_dir})", file=sys.stderr)


def _main(cfg: Config, run_dir: Path, storage: RunStorage, a: argparse.Namespace) -> int:
    from .console import Console

    con = Console(run_dir, verbose=a.verbose, quiet=a.quiet).install()
    con.header(f"PolyAudio-RL: {a.config}{' (resumed)' if a.resume else ''} -> {run_dir}  (logs: {con.dir}/)")
    import ray

    started_ray = not ray.is_initialized()
    try:
        try:
            check_resources(cfg, connect_ray(cfg, con))
        except ResourceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if started_ray:
                ray.shutdown()
            return 2
        try:
            return _run(cfg, run_dir, a, con, on_checkpoint=storage.push)
        except RunAborted as exc:  # a death past learner.max_restarts: what died, where, the --resume command
            con.log("error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            print(f"error: {exc}\n  (traceback and component logs in {con.dir}/)", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - the full traceback and where the component logs are
            con.error(exc)
            return 1
        finally:
            if started_ray:  # leave no Ray behind that a later run (or a `ray start` on this machine) would trip over
                ray.shutdown()
    finally:
        con.close()


def _shown(config: str) -> str:
    """The config path as the console shows it: relative to the repository when it lies inside."""
    path = Path(config).resolve()
    return str(path.relative_to(DEFAULT_CONFIG.parents[1])) if DEFAULT_CONFIG.parents[1] in path.parents else config


def _run(cfg: Config, run_dir: Path, a: argparse.Namespace, con: Any, on_checkpoint: Any = None) -> int:
    """The stages in order: data, SFT, GRPO (held-out evaluation before and after), serve + bench, summary."""
    from datagen.tasks.starter import STARTER_TASKS

    from .core.model import resolve_path
    from .data_setup import ensure_data
    from .stages import serve_bench_stage, sft_stage
    from .summary import write_summary

    n = 5 if cfg.eval.serve_bench else 4  # stages
    tasks = ", ".join(cfg.data.tasks) or (", ".join(STARTER_TASKS) if cfg.data.preset == "starter"
                                          else "the eleven paper tasks")
    con.header(f"1/{n} data: {cfg.data.preset} preset ({tasks}), model {cfg.model.path}")
    resolve_path(cfg.model)
    ensure_data(cfg, con)
    t0 = time.time()
    m = read_manifest(run_dir)  # stages the run finished already are not run again on --resume
    init = sft_stage(cfg, run_dir, con, f"2/{n}", skip=a.skip_sft, init_adapter=a.init_adapter, resume=bool(a.resume),
                     progress=not a.quiet, done=m.stages.get("sft", {}).get("checkpoint"))
    mark_stage(run_dir, "sft", **({"checkpoint": init} if init and not a.init_adapter
                                  else {"skipped": m.sft_skipped() or "sft off"}))
    with StopRequest() as stop:  # SIGTERM/SIGINT from here on: the stage in flight finishes, exit 0 (a second aborts)
        summary, bench = _grpo(cfg, run_dir, a, con, f"3/{n}", init, stop, on_checkpoint)
        bench_rows = serve_bench_stage(cfg, run_dir, resolve_path(cfg.model), con, f"4/{n}", not a.quiet,
                                       summary) if bench else []
        summary["wall_s"] = time.time() - t0
        con.header(f"{n}/{n} summary")
        write_summary(summary, run_dir, cfg, con, bench_rows)
    return 0


def _grpo(cfg: Config, run_dir: Path, a: argparse.Namespace, con: Any, header: str, init: str | None,
          stop: StopRequest, on_checkpoint: Any) -> tuple[dict[str, Any], bool]:
    """The GRPO stage (or, on ``--resume`` of a run whose steps are all done, its summary so far): the summary and
    whether serve + bench is still to run."""
    from .stages import grpo_stage, latest_checkpoint

    m = read_manifest(run_dir)
    if a.resume and m.grpo_steps_done() >= cfg.grpo.steps:
        con.header(f"{header} GRPO: done ({m.grpo_steps_done()} steps)")
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        summary.pop("stopped", None)
        return summary, "bench" not in summary
    con.header(f"{header} GRPO: {cfg.grpo.steps} steps x {cfg.grpo.prompts_per_step} prompts x "
               f"G={cfg.grpo.group_size}, {cfg.rollout.engine} rollout, {cfg.learner.num_workers} DeepSpeed learner(s)")
    grpo_resume = latest_checkpoint(run_dir, "grpo") if a.resume else None
    summary = grpo_stage(cfg, run_dir, init_adapter=init, resume=grpo_resume, progress=not a.quiet, console=con,
                         on_checkpoint=on_checkpoint, resumed=bool(a.resume), stop=stop)
    if "preempted" not in summary:
        mark_stage(run_dir, "grpo", steps=cfg.grpo.steps)
    return summary, not _stopped_after_grpo(stop, summary, cfg, run_dir, con)


def _stopped_after_grpo(stop: StopRequest, summary: dict[str, Any], cfg: Config, run_dir: Path, con: Any) -> bool:
    """A signal that came after GRPO's last step was checkpointed (during the held-out evaluation after it, or
    later): the run is trained, so it ends with its summary and exit 0; serve + bench is left to ``--resume``."""
    if not stop.requested or "preempted" in summary:
        return False
    summary["stopped"] = {"signal": stop.signal, "after": "GRPO"}
    con.print(f"[train] stopped by {stop.signal} after GRPO (all {cfg.grpo.steps} steps trained and checkpointed)"
              + (f"; serve + bench skipped. Continue with:\n    python -m polyaudio_rl.train --resume "
                 f"{cfg.run_dir or run_dir}" if cfg.eval.serve_bench else ""))
    return True


if __name__ == "__main__":
    sys.exit(main())
