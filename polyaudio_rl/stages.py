"""The stages of ``python -m polyaudio_rl.train`` after the data: LoRA SFT, GRPO between two held-out evaluations,
serve + bench. Each takes the config and the run directory and returns what the run's summary needs; the CLI
(:mod:`polyaudio_rl.train`) runs them in order and prints their headers.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .core.config import Config, to_dict
from .core.deaths import RunAborted, WorkerDied, dies_as, give_up_message
from .faults import FaultInjector
from .preemption import StopRequest

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


# ---------------------------------------------------------------------------------------------------- SFT
def sft_stage(cfg: Config, run_dir: Path, con: Any, header: str, *, skip: bool, init_adapter: str | None,
              resume: bool, progress: bool, done: str | None = None) -> str | None:
    """LoRA SFT into ``RUN_DIR/sft`` unless it is skipped, started from a given adapter, switched off, or ``done``
    (the checkpoint of the SFT that the run being resumed finished); a resumed SFT that stopped part-way continues
    from its newest checkpoint. Returns the adapter checkpoint GRPO starts from (None: the base model)."""
    if done:
        if not Path(done).is_dir():
            raise FileNotFoundError(f"the run finished SFT into {done}, which is gone: restore it, or start a new run")
        con.header(f"{header} LoRA SFT: done (from {done})")
        return done
    ckpt = init_adapter or latest_checkpoint(run_dir, "sft")
    if not skip and not init_adapter and (cfg.sft.max_steps or cfg.sft.epochs):
        from .sft import run_sft

        con.header(f"{header} LoRA SFT: {cfg.sft.epochs} epoch(s) of {cfg.data.train_dir}, batch "
                   f"{cfg.sft.batch_size}, lr {cfg.sft.lr:g}" + (f", continued from {ckpt}" if resume and ckpt else ""))
        res = run_sft(replace(cfg, run_dir=str(run_dir / "sft")), resume_from=ckpt if resume else None,
                      progress=progress, console=con)
        return res["checkpoint"] or ckpt  # resumed from its final checkpoint: nothing left to train
    con.header(f"{header} LoRA SFT: skipped ({'from ' + ckpt if ckpt and not skip else 'none'})")
    return None if skip else ckpt


# ---------------------------------------------------------------------------------------------------- held-out
def held_out_stage(driver: Any, prompts: list[Any], logger: Any, step: int, phase: str, say: Callable[[str], Any],
                   chance: float | None = None) -> dict[str, Any]:
    """Greedy accuracy of the rollout actors' current policy on the held-out prompts (overall and per task) and the
    held-out metrics of :mod:`eval.heldout_metrics` (after GRPO also the "does it listen" controls of
    :mod:`eval.listen`), logged as ``phase`` (``eval_before`` / ``eval_after``) at ``step`` and said on the console."""
    from eval.heldout import log_fields

    from .driver import evaluate
    from .samples import record_heldout

    with dies_as("rollout actor", "held-out evaluation"):
        res = evaluate(driver.rollout, prompts, driver.cfg.data.answer_tag, controls=phase == "eval_after",
                       seed=driver.cfg.seed)
    record_heldout(logger.run_dir, "after_sft" if phase == "eval_before" else "after_grpo", prompts, res.pop("items"))
    logger.log(step, {"phase": phase, **log_fields(res)})
    when = "before GRPO:" if phase == "eval_before" else "after GRPO: "
    say(f"   held-out {when} accuracy {res['accuracy']:.3f} on {res['n']} items"
        + (f" (chance {chance:.3f})" if chance is not None else ""))
    return res


# ---------------------------------------------------------------------------------------------------- GRPO
def grpo_stage(cfg: Config, run_dir: Path, init_adapter: str | None, resume: str | None, progress: bool = True,
               console: Any = None, on_checkpoint: Callable[[], Any] | None = None, resumed: bool = False,
               stop: StopRequest | None = None) -> dict[str, Any]:
    """GRPO from ``init_adapter`` (or ``resume``), with the held-out evaluation before (not on a resume) and after;
    ``on_checkpoint()`` runs after each checkpoint is written (the run directory's mirror to a URI, see
    :mod:`polyaudio_rl.storage`). ``resumed``: the run is resumed (``--resume``), so the metrics rows its first
    attempt logged after ``resume`` (all of them without one) are cut: one row per step. ``stop``: the caller's
    entered :class:`StopRequest` (SIGTERM/SIGINT noted at any moment of the stage, after its last step too: the
    stage then ends normally, its last checkpoint written); without one the stage holds its own. Returns the
    summary's GRPO part."""
    if stop is None:
        with StopRequest() as own:
            return grpo_stage(cfg, run_dir, init_adapter, resume, progress=progress, console=console,
                              on_checkpoint=on_checkpoint, resumed=resumed, stop=own)
    from .core.metrics import MetricsLogger, plot_curves
    from .data_setup import chance_level, held_out_prompts
    from .driver import GRPODriver
    from .samples import RolloutSampler

    driver = GRPODriver.build(cfg, init_adapter=init_adapter, resume=resume)
    # resumed: the rows (and wandb steps, rollout samples) logged after the checkpoint (all of them without one)
    # are cut; those steps are redone identically below
    redo_after = (driver.learner.step if resume else -1) if resumed else None
    driver.on_scored = RolloutSampler(run_dir, cfg.logging, resume_step=redo_after)
    logger = MetricsLogger(run_dir, to_dict(cfg), cfg.wandb_mode, resume_step=redo_after)
    if console is not None:
        console.quiet_loggers()  # vllm / ray.data / wandb configured their own console handlers on import
    say = console.print if console is not None else print
    summary: dict[str, Any] = {"rollout_actors": driver.rollout.stats()}  # pid, node id, engine per actor
    rec = Recovery(driver, run_dir, logger)
    try:
        # the rollout actors start from the learner's policy (SFT adapter or resumed state)
        rec.retry(driver.sync, driver.learner.step, redo=False)
        prompts = held_out_prompts(cfg, driver.processor, cfg.eval.max_items or 32)
        if prompts:
            summary["chance"] = chance_level([p.sample for p in prompts])
        if prompts and not resume:
            summary["eval_before"] = rec.retry(lambda: held_out_stage(
                driver, prompts, logger, driver.learner.step, "eval_before", say, summary["chance"]), driver.learner.step)
        faults = FaultInjector(cfg.faults, start_step=driver.learner.step)
        while True:
            _train(cfg, run_dir, driver, logger, summary, say, progress, console, on_checkpoint, faults, rec, stop)
            try:
                driver.close()  # the producer is done and the last (background) sync verified before evaluating
                if prompts and "preempted" not in summary:
                    summary["eval_after"] = held_out_stage(driver, prompts, logger, cfg.grpo.steps, "eval_after", say)
                break
            except WorkerDied as death:  # steps lost with it (none when the last checkpoint is the last step) redone
                if "preempted" in summary:  # stopping: the checkpoint of the last step trained is written
                    break
                rec.recover(death, cfg.grpo.steps)
        summary.update(driver.summary())
    finally:
        logger.close()
        driver.shutdown(run_dir / "timeline.json")  # timeline.json: a Chrome trace, open it in Perfetto
    if (run_dir / "metrics.jsonl").exists():
        summary["plot"] = str(plot_curves(run_dir / "metrics.jsonl", run_dir / "reward_curves.png"))
    return summary


class Recovery:
    """What the GRPO stage does when a process died (:class:`~polyaudio_rl.core.deaths.WorkerDied`, any pool, any
    phase): rebuild from the newest valid GRPO checkpoint (:meth:`GRPODriver.recover`) and cut the metrics rows of
    the steps that will be redone, up to ``learner.max_restarts`` times; past that, :class:`RunAborted` with a message
    naming what died, where, and the ``--resume`` command."""

    def __init__(self, driver: Any, run_dir: Path, logger: Any):
        self.driver, self.run_dir, self.logger = driver, run_dir, logger

    def recover(self, death: WorkerDied, step: int) -> int:
        """Rebuild after ``death`` seen at GRPO step ``step`` (a death during the rebuild counts as one more);
        returns the step the rebuilt learner is at."""
        d, cfg = self.driver, self.driver.cfg
        while True:
            death = d.name(death)
            ckpt = latest_checkpoint(self.run_dir, "grpo")
            if d.learner_restarts >= cfg.learner.max_restarts:
                raise RunAborted(give_up_message(death, step, d.learner_restarts, cfg.learner.max_restarts, ckpt,
                                                 str(cfg.run_dir or self.run_dir))) from death
            try:
                at = d.recover(death, ckpt)
            except WorkerDied as again:
                death = again
                continue
            self.logger.rewind(at)
            return at

    def retry(self, fn: Callable[[], Any], step: int, redo: bool = True) -> Any:
        """``fn()``, again after each recovery from a death (``redo=False``: the recovery itself did its work)."""
        while True:
            try:
                return fn()
            except WorkerDied as death:
                self.recover(death, step)
                if not redo:
                    return None


def _train(cfg: Config, run_dir: Path, driver: Any, logger: Any, summary: dict[str, Any], say: Callable[[str], Any],
           progress: bool, console: Any, on_checkpoint: Callable[[], Any] | None, faults: FaultInjector,
           rec: Recovery, stop: StopRequest) -> None:
    """The GRPO steps from the learner's step to ``grpo.steps``: faults (when asked for), a rebuild after a process
    died (``rec``), metrics, checkpoints; a signal ``stop`` noted finishes the step in flight, checkpoints and stops."""
    start = driver.learner.step
    bar = _progress_bar(cfg.grpo.steps, start, progress, console)
    step = start + 1
    while step <= cfg.grpo.steps:
        try:
            faults.before_step(step, driver.rollout, driver.rewards, driver.learner)  # cfg.faults: off by default
            res = driver.step(step)
            logger.log(step, res.metrics)
            stopping = stop.requested  # a signal from here on stops after the next step (its checkpoint)
            _checkpoint(cfg, run_dir, driver, step, stopping, on_checkpoint)
        except WorkerDied as death:
            step = rec.recover(death, step) + 1
            continue
        bar.update(1)
        bar.set_postfix(reward=f"{res.metrics.get('reward/total', float('nan')):.3f}",
                        kl=f"{res.metrics.get('kl', float('nan')):.4f}",
                        acc=f"{res.metrics.get('reward/correctness', float('nan')):.3f}", refresh=False)
        if stopping and step < cfg.grpo.steps:
            summary["preempted"] = {"signal": stop.signal, "after_step": step}
            say(f"[train] stopped by {stop.signal} after GRPO step {step}/{cfg.grpo.steps} (checkpoint written). "
                f"Continue with:\n    python -m polyaudio_rl.train --resume {cfg.run_dir or run_dir}")
            break
        step += 1
    bar.close()
    if faults.fired:
        summary["faults"] = faults.fired


def _checkpoint(cfg: Config, run_dir: Path, driver: Any, step: int, stopping: bool,
                on_checkpoint: Callable[[], Any] | None) -> None:
    """The checkpoint of ``step`` when it is due (every ``learner.checkpoint_every``, the last step, or a stop
    requested: then with the batches sampled ahead, see :meth:`GRPODriver.inflight_batches`), then ``on_checkpoint``
    (the mirror to the run directory's URI)."""
    every = cfg.learner.checkpoint_every
    if (every and step % every == 0) or step == cfg.grpo.steps or stopping:
        driver.save_checkpoint(str(run_dir / "grpo" / "checkpoints" / f"step-{step:06d}"), step,
                               stopping=stopping and step < cfg.grpo.steps)
        if on_checkpoint is not None:
            on_checkpoint()


def _progress_bar(total: int, initial: int, progress: bool, console: Any) -> Any:
    if console is not None and progress:
        return console.bar(total, "grpo", initial=initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="grpo", disable=not progress)


# ---------------------------------------------------------------------------------------------------- serve + bench
def serve_bench_stage(cfg: Config, run_dir: Path, model_path: str, con: Any, header: str, progress: bool,
                      summary: dict[str, Any]) -> list[str]:
    """Serve the last GRPO adapter with ``eval.serve`` and run ``eval.bench`` against it over HTTP (when
    ``eval.serve_bench`` and the run finished); adds ``summary["bench"]``, returns the console's bench rows."""
    final = latest_checkpoint(run_dir, "grpo")
    if not (cfg.eval.serve_bench and final and "preempted" not in summary):
        return []
    from .serve_bench import bench_lines, serve_and_bench

    con.header(f"{header} serve + bench: eval.serve (Ray Serve, OpenAI API) with the trained adapter, eval.bench on "
               f"{cfg.data.bench_dir}")
    rep = serve_and_bench(cfg, run_dir, str(Path(final) / "adapter"), model_path, progress=progress, console=con)
    summary["bench"] = {"url": rep["url"], "overall": rep["overall"], "tasks": rep["tasks"],
                        "judge_note": rep["judge_note"], "report": str(run_dir / "bench" / "report.md")}
    return bench_lines(rep)
