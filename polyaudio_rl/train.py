"""``python -m polyaudio_rl.train``: the whole run — data, tiny checkpoint, LoRA SFT, GRPO, evaluation.

    python -m polyaudio_rl.train [--config configs/X.yaml] [--run-dir DIR] [--resume RUN_DIR] [key=value ...]
    ray job submit --working-dir . -- python -m polyaudio_rl.train --config configs/qwen2_audio_7b_8xa100.yaml

Connects to a running Ray cluster when there is one (``ray job submit`` sets ``RAY_ADDRESS``; or ``ray_address``
in the config), else starts a local one. With no arguments it runs the embedded default end to end on one CPU
machine: builds the ``ci`` data and the tiny checkpoint if missing, SFT, GRPO, a held-out evaluation before and after
GRPO, and writes ``RUN_DIR/metrics.jsonl``, ``RUN_DIR/reward_curves.png`` and ``RUN_DIR/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .core.config import Config, ConfigError, load_config, to_dict
from .faults import FaultInjector
from .preemption import StopRequest
from .storage import RunStorage


class ResourceError(RuntimeError):
    """The config asks for more of a resource than the Ray cluster has."""


# ---------------------------------------------------------------------------------------------------- setup
_REAPER: Any = None


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


def _start_reaper_once() -> None:
    global _REAPER
    if _REAPER is None:
        from .core.procguard import start_reaper

        _REAPER = start_reaper() or False


def connect_ray(cfg: Config, console: Any = None) -> dict[str, Any]:
    """Join ``cfg.ray_address`` / ``RAY_ADDRESS`` when set, else start a local Ray. Returns cluster resources.
    With a :class:`~polyaudio_rl.console.Console`, Ray's own log lines and the workers' output go to its files."""
    import ray

    if console is not None:
        console.quiet_loggers()  # ray configured a console handler on import

    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        env = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
                            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                            "PYTHONPATH": os.pathsep.join(p for p in [str(Path.cwd()), os.environ.get("PYTHONPATH", "")] if p)}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            # address="local": a new local Ray, never a `ray start` cluster that happens to run on this machine
            ray.init(address="local", num_cpus=cfg.ray_num_cpus or None, include_dashboard=False, runtime_env=env,
                     log_to_driver=True)
            _start_reaper_once()  # the local Ray's processes end with this driver, however it dies
    if console is not None:
        console.route_ray_workers()
    return ray.cluster_resources()


def check_resources(cfg: Config, resources: dict[str, Any]) -> None:
    """Fail before anything starts when the placement asks for more GPUs/CPUs than the cluster has."""
    r, lc = cfg.rollout, cfg.learner
    gpus = r.num_actors * r.gpus_per_actor + (lc.num_workers if lc.use_gpu else 0)
    have = float(resources.get("GPU", 0))
    if gpus > have:
        raise ResourceError(
            f"the config needs {gpus:g} GPUs (rollout.num_actors={r.num_actors} × rollout.gpus_per_actor="
            f"{r.gpus_per_actor:g} + learner.num_workers={lc.num_workers if lc.use_gpu else 0}), "
            f"but the Ray cluster has {have:g}")
    if r.placement_strategy == "STRICT_SPREAD":
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if r.num_actors > nodes:
            raise ResourceError(f"rollout.placement_strategy=STRICT_SPREAD needs one node per rollout actor "
                                f"({r.num_actors}), but the Ray cluster has {nodes} alive node(s)")
    cpus = r.num_actors * r.cpus_per_actor + lc.num_workers * lc.cpus_per_worker
    if cpus > float(resources.get("CPU", 0)):
        raise ResourceError(f"the config needs {cpus:g} CPUs for rollout actors and learners, the cluster has "
                            f"{resources.get('CPU', 0):g} (raise ray_num_cpus for a local cluster)")


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
        from datagen.config import DatagenConfig

        dcfg = DatagenConfig(preset=cfg.data.preset, seed=cfg.seed, tasks=list(cfg.data.tasks),
                             min_clips=cfg.data.min_clips, max_clips=cfg.data.max_clips)
        dcfg.validate()
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
    """Expected accuracy of a uniform guess over each item's answer space, averaged over the items that have one
    (``metadata.answer_space`` from datagen, else the clip indices / choices / yes-no); None when no item has one."""
    per = []
    for s in samples:
        space = s.metadata.get("answer_space")
        kind = s.key.get("type")
        if space:
            per.append(1.0 / len(space))
        elif kind == "clip":
            per.append(1.0 / len(s.clips))
        elif kind == "option" and s.choices:
            per.append(1.0 / len(s.choices))
        elif kind == "yesno":
            per.append(0.5)
    return float(sum(per) / len(per)) if per else None


def latest_checkpoint(run_dir: Path, stage: str) -> str | None:
    """The newest complete checkpoint ``RUN_DIR/<stage>/checkpoints/step-NNNNNN`` whose files match their recorded
    checksums (temporary dirs left by a killed writer are ignored; a damaged newer one is skipped with a warning on
    the console naming the file), or None."""
    import warnings

    from .core.checkpoint import CheckpointWarning, latest_valid_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        found = latest_valid_checkpoint(run_dir / stage / "checkpoints")
    for w in caught:
        print(f"[train] warning: {w.message}", file=sys.stderr)
    return found


# ---------------------------------------------------------------------------------------------------- stages
def run_grpo(cfg: Config, run_dir: Path, init_adapter: str | None, resume: str | None, progress: bool = True,
             console: Any = None, on_checkpoint: Any = None) -> dict[str, Any]:
    """GRPO from ``init_adapter`` (or ``resume``); ``on_checkpoint()`` runs after each checkpoint is written (the
    run directory's mirror to a URI, see :mod:`polyaudio_rl.storage`)."""
    from tqdm import tqdm

    from actors.learner import Learner
    from actors.rollout import RolloutPool
    from rewards.actor import RewardPool

    from .data_stream import PromptStream
    from .driver import GRPODriver, LearnerFailure, evaluate
    from .core.metrics import MetricsLogger, plot_curves
    from .core.model import load_processor, resolve_path

    model_path = resolve_path(cfg.model)
    processor = load_processor(model_path)
    total = cfg.grpo.steps * cfg.grpo.inner_epochs  # optimizer steps: where a decaying grpo.lr_schedule reaches 0
    learner = Learner(cfg, stage="grpo", resume_from=resume, init_adapter=init_adapter, total_steps=total)
    state = learner.client_state or {}
    # the prompt stream starts decoding (its own thread) while the rollout engines boot
    stream = PromptStream(cfg.data.pref_dir, model_path, cfg.data, seed=cfg.seed,
                          position=int(state.get("data_position", 0))).start()
    rollout = RolloutPool(cfg, model_path=model_path)
    rewards = RewardPool(cfg.reward, answer_tag=cfg.data.answer_tag)
    driver = GRPODriver(cfg, stream, rollout, rewards, learner, processor, version=int(state.get("version", 0)))
    logger = MetricsLogger(run_dir, to_dict(cfg), cfg.wandb_mode)
    if console is not None:
        console.quiet_loggers()  # vllm / ray.data / wandb configured their own console handlers on import
    if resume:
        logger.rewind(learner.step)  # steps logged after the checkpoint are redone (identically) below
    summary: dict[str, Any] = {"rollout_actors": rollout.stats()}  # pid, node id, engine per actor
    restarts = 0
    try:
        driver.sync()  # the rollout actors start from the learner's policy (SFT adapter or resumed state)
        eval_prompts = held_out_prompts(cfg, processor, cfg.eval.max_items or 32)
        say = console.print if console is not None else print
        if eval_prompts:
            summary["chance"] = chance_level([p.sample for p in eval_prompts])
        if eval_prompts and not resume:
            summary["eval_before"] = evaluate(rollout, eval_prompts, cfg.data.answer_tag)
            logger.log(learner.step, {"phase": "eval_before", "eval/accuracy": summary["eval_before"]["accuracy"]})
            say(f"   held-out before GRPO: accuracy {summary['eval_before']['accuracy']:.3f} on "
                f"{summary['eval_before']['n']} items" + (f" (chance {summary['chance']:.3f})"
                                                           if summary.get("chance") is not None else ""))
        start = learner.step
        bar = (console.bar(cfg.grpo.steps, "grpo", initial=start) if console is not None and progress
               else tqdm(total=cfg.grpo.steps, initial=start, desc="grpo", disable=not progress))
        step = start + 1
        faults = FaultInjector(cfg.faults, start_step=start)
        with StopRequest() as stop:  # SIGTERM/SIGINT: finish the step in flight, checkpoint, exit 0
            while step <= cfg.grpo.steps:
                try:
                    faults.before_step(step, rollout, rewards, learner)  # cfg.faults: off unless asked for
                    res = driver.step(step)
                except LearnerFailure as exc:
                    if restarts >= cfg.learner.max_restarts:
                        raise
                    restarts += 1
                    ckpt = latest_checkpoint(run_dir, "grpo")
                    print(f"[train] {exc}; restarting the learner from {ckpt or 'its initial adapter'} "
                          f"({restarts}/{cfg.learner.max_restarts})", file=sys.stderr)
                    learner.shutdown()
                    learner = Learner(cfg, stage="grpo", resume_from=ckpt, init_adapter=None if ckpt else init_adapter,
                                      total_steps=total)
                    stream.close()
                    stream = PromptStream(cfg.data.pref_dir, model_path, cfg.data, seed=cfg.seed,
                                          position=int((learner.client_state or {}).get("data_position", 0)))
                    driver.restore(learner, stream, learner.step)
                    logger.rewind(learner.step)
                    driver.sync()
                    step = learner.step + 1
                    continue
                logger.log(step, res.metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{res.metrics.get('reward/total', float('nan')):.3f}",
                                kl=f"{res.metrics.get('kl', float('nan')):.4f}",
                                acc=f"{res.metrics.get('reward/correctness', float('nan')):.3f}", refresh=False)
                every = cfg.learner.checkpoint_every
                if (every and step % every == 0) or step == cfg.grpo.steps or stop.requested:
                    learner.save_checkpoint(str(run_dir / "grpo" / "checkpoints" / f"step-{step:06d}"),
                                            {"data_position": driver.data_position, "version": driver.version, "step": step})
                    if on_checkpoint is not None:
                        on_checkpoint()
                if stop.requested and step < cfg.grpo.steps:
                    summary["preempted"] = {"signal": stop.signal, "after_step": step}
                    say(f"[train] stopped by {stop.signal} after GRPO step {step}/{cfg.grpo.steps} (checkpoint written). "
                        f"Continue with:\n    python -m polyaudio_rl.train --resume {cfg.run_dir or run_dir}")
                    break
                step += 1
        bar.close()
        driver.close()  # the producer is done and the last (background) sync verified before evaluating
        if eval_prompts and "preempted" not in summary:
            summary["eval_after"] = evaluate(rollout, eval_prompts, cfg.data.answer_tag)
            logger.log(cfg.grpo.steps, {"phase": "eval_after", "eval/accuracy": summary["eval_after"]["accuracy"]})
            say(f"   held-out after GRPO:  accuracy {summary['eval_after']['accuracy']:.3f} on "
                f"{summary['eval_after']['n']} items")
        summary["bad_rows"] = stream.bad
        summary["trained_ids"] = driver.trained_ids
        summary["policy_version"] = driver.version
        summary["rollout_resends"] = rollout.resends
        summary["learner_restarts"] = restarts
        summary["reward_actor_replacements"] = rewards.replaced
        if faults.fired:
            summary["faults"] = faults.fired
    finally:
        logger.close()
        try:
            driver.close()
        except Exception as exc:  # noqa: BLE001 - an error of the run is already on its way up
            print(f"[train] pipeline: {exc}", file=sys.stderr)
        driver.timeline.write(run_dir / "timeline.json")  # Chrome trace: open in Perfetto
        stream.close()
        for part in (rollout, rewards, learner):
            try:
                part.shutdown()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"[train] shutdown: {exc}", file=sys.stderr)
    if (run_dir / "metrics.jsonl").exists():
        summary["plot"] = str(plot_curves(run_dir / "metrics.jsonl", run_dir / "reward_curves.png"))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PolyAudio-RL training: LoRA SFT then GRPO (see module docstring)")
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("--run-dir", default=None, help="output directory or pyarrow.fs URI, e.g. file:///shared/runs/x, "
                    "s3://bucket/runs/x (default runs/<timestamp>)")
    ap.add_argument("--resume", default=None, help="a RUN_DIR (path or URI) to continue exactly (its config.yaml is used)")
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
        else:
            cfg = load_config(a.config, a.overrides)
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
    try:
        return _main(cfg, run_dir, storage, a)
    finally:
        if storage.uri is not None:  # also after a SIGTERM stop or a failure: what was written outlives the node
            storage.push()
            print(f"[train] results: {storage.uri} (mirrored from {run_dir})", file=sys.stderr)


def _main(cfg: Config, run_dir: Path, storage: RunStorage, a: argparse.Namespace) -> int:
    from .console import Console

    con = Console(run_dir, verbose=a.verbose, quiet=a.quiet).install()
    con.header(f"PolyAudio-RL: {a.config or 'configs/tiny_cpu.yaml'} -> {run_dir}  (logs: {con.dir}/)")
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
        except Exception as exc:  # noqa: BLE001 - the full traceback and where the component logs are
            con.error(exc)
            return 1
        finally:
            if started_ray:  # leave no Ray behind that a later run (or a `ray start` on this machine) would trip over
                ray.shutdown()
    finally:
        con.close()


def _run(cfg: Config, run_dir: Path, a: argparse.Namespace, con: Any, on_checkpoint: Any = None) -> int:
    from .core.model import resolve_path

    from datagen.tasks.starter import STARTER_TASKS

    n = 5 if cfg.eval.serve_bench else 4  # stages
    tasks = ", ".join(cfg.data.tasks) or (", ".join(STARTER_TASKS) if cfg.data.preset == "starter"
                                          else "the eleven paper tasks")
    con.header(f"1/{n} data: {cfg.data.preset} preset ({tasks}), model {cfg.model.path}")
    resolve_path(cfg.model)
    ensure_data(cfg, con)
    t0 = time.time()
    sft_ckpt = a.init_adapter or latest_checkpoint(run_dir, "sft")
    sft_res: dict[str, Any] = {}
    if not a.skip_sft and not a.init_adapter and (cfg.sft.max_steps or cfg.sft.epochs) and not (a.resume and sft_ckpt):
        from .sft import run_sft

        con.header(f"2/{n} LoRA SFT: {cfg.sft.epochs} epoch(s) of {cfg.data.train_dir}, batch {cfg.sft.batch_size}, "
                   f"lr {cfg.sft.lr:g}")
        sft_res = run_sft(replace(cfg, run_dir=str(run_dir / "sft")), progress=not a.quiet, console=con)
        sft_ckpt = sft_res["checkpoint"]
    else:
        con.header(f"2/{n} LoRA SFT: skipped ({'from ' + sft_ckpt if sft_ckpt and not a.skip_sft else 'none'})")
    con.header(f"3/{n} GRPO: {cfg.grpo.steps} steps x {cfg.grpo.prompts_per_step} prompts x G={cfg.grpo.group_size}, "
               f"{cfg.rollout.engine} rollout, {cfg.learner.num_workers} DeepSpeed learner(s)")
    grpo_resume = latest_checkpoint(run_dir, "grpo") if a.resume else None
    summary = run_grpo(cfg, run_dir, init_adapter=None if a.skip_sft else sft_ckpt, resume=grpo_resume,
                       progress=not a.quiet, console=con, on_checkpoint=on_checkpoint)
    bench_rows: list[str] = []
    final = latest_checkpoint(run_dir, "grpo")
    if cfg.eval.serve_bench and final and "preempted" not in summary:
        from .serve_bench import bench_lines, serve_and_bench

        con.header(f"4/{n} serve + bench: eval.serve (Ray Serve, OpenAI API) with the trained adapter, eval.bench on "
                   f"{cfg.data.bench_dir}")
        rep = serve_and_bench(cfg, run_dir, str(Path(final) / "adapter"), resolve_path(cfg.model), progress=not a.quiet,
                              console=con)
        summary["bench"] = {"url": rep["url"], "overall": rep["overall"], "tasks": rep["tasks"],
                            "judge_note": rep["judge_note"], "report": str(run_dir / "bench" / "report.md")}
        bench_rows = bench_lines(rep)
    summary["wall_s"] = time.time() - t0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    con.header(f"{n}/{n} summary")
    lines = summary_lines(summary, run_dir)
    for line in [*lines[:-1], *bench_rows, lines[-1]]:
        con.print("   " + line)
    try:
        from .demo import write_report

        report = write_report(run_dir, cfg, summary, lines[:-1], bench_rows)
        con.print(f"   report: {report}")
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say why the report is missing
        con.log("train", f"report failed: {exc!r}")
        con.print(f"   report: not written ({type(exc).__name__}: {exc}; see {con.path('train')})")
    return 0


def summary_lines(summary: dict[str, Any], run_dir: Path) -> list[str]:
    """The final table: held-out accuracy per task (chance / after SFT / after GRPO), the reward curve's ends."""
    from .console import table
    from .core.metrics import read_metrics

    before, after = summary.get("eval_before"), summary.get("eval_after")
    out: list[str] = []
    if after:
        tasks = sorted(after["per_task"])
        rows = []
        if summary.get("chance") is not None:
            rows.append(["chance (uniform guess)", f"{summary['chance']:.3f}"] + [""] * len(tasks))
        if before:
            rows.append(["after SFT (before GRPO)", f"{before['accuracy']:.3f}"]
                        + [f"{before['per_task'].get(t, float('nan')):.3f}" for t in tasks])
        rows.append(["after GRPO", f"{after['accuracy']:.3f}"] + [f"{after['per_task'][t]:.3f}" for t in tasks])
        out += table(rows, [f"held-out accuracy ({after['n']} items)", "all", *tasks])
    curve = [r["reward/total"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("reward/total") is not None]
    if curve:
        k = max(1, min(10, len(curve) // 3))
        out.append(f"reward/total: first {k} steps {sum(curve[:k]) / k:.3f} -> last {k} steps "
                   f"{sum(curve[-k:]) / k:.3f} ({len(curve)} steps)")
    if before and after:
        d = after["accuracy"] - before["accuracy"]
        out.append(f"GRPO changed held-out accuracy by {d:+.3f}"
                   + (f"; {after['accuracy'] - summary['chance']:+.3f} over chance" if summary.get("chance") is not None
                      else ""))
    out.append(f"run directory: {run_dir}  (summary.json, metrics.jsonl, reward_curves.png, logs/)")
    return out


if __name__ == "__main__":
    sys.exit(main())
