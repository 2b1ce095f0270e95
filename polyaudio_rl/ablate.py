"""``python -m polyaudio_rl.ablate``: run reward ablations one after another and compare them.

    python -m polyaudio_rl.ablate --suite starter [--out DIR] [--seed N] [--repeats K] [--quiet] [key=value ...]
                                                                                                   (= make ablate)
    python -m polyaudio_rl.ablate [--configs 'configs/ablations/*.yaml'[,MORE]] [--out DIR] [--skip-judge]
                                  [--judge-url URL] [--skip-sft] [--quiet] [key=value ...]

``--suite starter`` runs ``configs/ablations/starter/`` on the starter ablation curriculum (one set-of-clips task
in paraphrase families, lenient correctness: :mod:`datagen.tasks.starter_ablation`): ``correctness_only``,
``plus_parsimony``, ``plus_consistency``, ``paper_mix`` (the default weights 1.0/0.2/0.1/0.1) and ``grpo_only``
(paper_mix without SFT). The runs that train SFT share one SFT checkpoint: the first one trains it, the later ones
start GRPO from it (``--init-adapter``).

Every run goes through the same driver (:func:`polyaudio_rl.train.main`), in its own run directory ``OUT/<name>``,
with the ``key=value`` overrides applied to every run. All runs share one local Ray cluster (or the one
``RAY_ADDRESS``/``ray_address`` names). Ablations whose correctness needs the LLM judge (``reward.correctness_mode``
judge/both) run last, against a judge this command starts with :mod:`eval.serve` (Ray Serve, 127.0.0.1, the policy's
checkpoint as judge model) — or against ``--judge-url`` — or are skipped and marked so with ``--skip-judge``.
A run that fails is recorded as failed (its traceback in ``OUT/<name>/error.txt``) and the others go on.
``--repeats K`` runs every configuration K times with ``rollout.seed`` 0..K−1 (``OUT/<name>@<k>``; the same SFT
checkpoint) and reads the report's checks on the means: on the starter suite one run's sampling draw alone moves
held-out accuracy by up to 0.25 (docs/ablations.md), more than the differences the checks ask about.

Writes ``OUT/ablations.json`` (``{"runs": {name: {"accuracy", "irrelevant_clip_rate", "paraphrase_agreement",
"format_rate", "mean_length", ...}}, "table6": ..., "ablations": [every run's record]}``), ``OUT/ablations.md`` and
the PNGs of :mod:`polyaudio_rl.ablate_report`.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core.config import ConfigError, load_config
from .core.config.reward import REWARD_COMPONENTS

# Logical CPUs Ray Serve needs for the two LLM deployments + ingress + proxy: with fewer, the OpenAI ingress replica
# is never scheduled beside the LLM servers' placement groups on a 2-core machine.
JUDGE_CPUS = 6


def needs_judge(cfg: Any) -> bool:
    return cfg.reward.correctness_mode in ("judge", "both") and cfg.reward.weights.get("correctness", 0.0) > 0


class Session:
    """The Ray cluster shared by the runs, and the judge endpoint started on it when asked for."""

    def __init__(self, cfg: Any, with_judge: bool):
        self.cfg = cfg
        self.with_judge = with_judge
        self.judge_url = ""

    def up(self) -> None:
        from .core.cluster import connect_ray

        extra = JUDGE_CPUS if self.with_judge else 0
        connect_ray(replace(self.cfg, ray_num_cpus=(self.cfg.ray_num_cpus or os.cpu_count() or 1) + extra))

    def start_judge(self) -> str:
        """The tiny-checkpoint judge (and policy) via eval.serve on this cluster; returns its /v1 URL."""
        from eval import serve as eval_serve

        from .core.model import resolve_path
        from .core.net import free_port

        if not self.judge_url:
            scfg = replace(self.cfg.serve, host="127.0.0.1", port=free_port())
            path = resolve_path(self.cfg.model)
            print(f"[ablate] starting the judge ({path}) with eval.serve on {scfg.host}:{scfg.port}", flush=True)
            # With the key in serve.api_key_env (POLYAUDIO_API_KEY), the judge requires it; the runs' judge clients
            # read the same variable (reward.judge.api_key_env).
            self.judge_url = eval_serve.start(scfg, path, path, api_key=eval_serve.resolve_api_key(None, scfg.api_key_env))
        return self.judge_url

    def restart(self) -> None:
        """After a failed run: a fresh cluster, so nothing the run left behind holds resources."""
        had_judge = bool(self.judge_url)
        self.down()
        self.up()
        if had_judge:
            self.start_judge()

    def down(self) -> None:
        import ray

        if self.judge_url:
            from ray import serve

            try:
                serve.shutdown()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"[ablate] serve shutdown: {exc}", file=sys.stderr)
            self.judge_url = ""
        if ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------- one run
def collect(run_dir: Path) -> dict[str, Any]:
    """Held-out correctness (before/after GRPO) and the mean of each reward component over the GRPO steps."""
    from .core.metrics import read_metrics

    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("phase") == "grpo"]
    means: dict[str, float] = {}
    for key in (*REWARD_COMPONENTS, "total"):
        vals = [r[f"reward/{key}"] for r in steps if r.get(f"reward/{key}") is not None]
        if vals:
            means[key] = sum(vals) / len(vals)
    return {"eval_before": summary.get("eval_before"), "eval_after": summary.get("eval_after"),
            "chance": summary.get("chance"), "reward_means": means, "grpo_steps": len(steps),
            "wall_s": summary.get("wall_s")}


class _Tee(io.TextIOBase):
    """Writes to the real stderr and keeps a copy (the driver reports config/resource errors on stderr)."""

    def __init__(self, stream: Any):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.stream.write(s)
        return self.kept.write(s)

    def flush(self) -> None:
        self.stream.flush()


def run_one(name: str, config: str, run_dir: Path, overrides: list[str], flags: list[str]) -> dict[str, Any]:
    from . import train

    rec: dict[str, Any] = {"name": name, "config": config, "run_dir": str(run_dir), "status": "failed"}
    t0 = time.time()
    try:
        tee = _Tee(sys.stderr)
        with contextlib.redirect_stderr(tee):
            rc = train.main(["--config", config, "--run-dir", str(run_dir), *flags, *overrides])
        if rc != 0:
            said = [l for l in tee.kept.getvalue().splitlines() if l.strip()]
            raise RuntimeError(f"polyaudio_rl.train exited with status {rc}" + (f" ({said[-1]})" if said else ""))
        rec.update(collect(run_dir), status="ok")
    except Exception as exc:  # noqa: BLE001 - a failed ablation is reported, the others go on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        rec["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        print(f"[ablate] {name} failed: {rec['error']} (traceback in {run_dir / 'error.txt'})", file=sys.stderr)
    rec["seconds"] = time.time() - t0
    return rec


# ---------------------------------------------------------------------------------------------------- plan
SUITES = {"starter": "configs/ablations/starter"}
# The starter suite's runs in report order (the SFT-sharing runs first: the first one trains the shared SFT).
SUITE_ORDER = {"starter": ("correctness_only", "plus_parsimony", "plus_consistency", "paper_mix", "grpo_only")}


def suite_configs(suite: str) -> list[str]:
    """The suite's config paths in its run order (an unknown suite is an error naming the known ones)."""
    if suite not in SUITES:
        raise ValueError(f"--suite {suite!r}: unknown suite (known: {', '.join(SUITES)})")
    return [str(Path(SUITES[suite]) / f"{name}.yaml") for name in SUITE_ORDER[suite]]


def plan_runs(paths: list[str], overrides: list[str], skip_judge: bool) -> tuple[list, list[dict[str, Any]]]:
    """Read every config first: (runnable (record, config) pairs with the judge ablations last, records of the
    configs that failed to load or were skipped)."""
    plan, results = [], []
    for p in paths:
        name = Path(p).stem
        try:
            cfg = load_config(p, overrides)
        except (ConfigError, ValueError, OSError) as exc:
            results.append({"name": name, "config": p, "status": "failed", "error": f"config: {exc}"})
            continue
        rec = {"name": name, "config": p, "weights": dict(cfg.reward.weights),
               "correctness_mode": cfg.reward.correctness_mode, "judge": needs_judge(cfg),
               "sft": bool(cfg.sft.epochs or cfg.sft.max_steps)}
        if rec["judge"] and skip_judge:
            results.append({**rec, "status": "skipped", "note": "needs the LLM judge (--skip-judge)"})
        else:
            plan.append((rec, cfg))
    plan.sort(key=lambda rc: rc[0]["judge"])
    return plan, results


def shared_sft(run_dir: Path) -> str | None:
    """The SFT checkpoint a finished run trained (``RUN_DIR/sft/checkpoints/step-N``), for the next runs to share."""
    from .stages import latest_checkpoint

    return latest_checkpoint(run_dir, "sft") if (run_dir / "sft").is_dir() else None


def run_flags(rec: dict[str, Any], base: list[str], share: bool, sft_ckpt: str | None) -> list[str]:
    """train flags for one run: a run with SFT starts from the shared SFT checkpoint when sharing and one exists."""
    if share and rec.get("sft") and sft_ckpt and "--skip-sft" not in base:
        return [*base, "--init-adapter", sft_ckpt]
    return list(base)


def judge_overrides(rec: dict[str, Any], cfg: Any, session: Session, judge_url: str) -> list[str]:
    """``reward.judge.*`` overrides pointing a judge ablation at the judge (started here unless given)."""
    if not rec["judge"]:
        return []
    extra = [f"reward.judge.base_url={judge_url or session.start_judge()}"]
    if not judge_url:
        extra.append(f"reward.judge.model={cfg.serve.judge_model_id}")
    return extra


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Run the reward ablations through the training driver and compare them.")
    ap.add_argument("--suite", default="", help=f"a named suite instead of --configs: {', '.join(SUITES)}")
    ap.add_argument("--configs", default="configs/ablations/*.yaml",
                    help="ablation configs: a glob, or several globs/paths separated by commas")
    ap.add_argument("--out", default=None, help="output directory (default runs/ablations-<timestamp>)")
    ap.add_argument("--seed", type=int, default=None, help="seed=N for every run (SFT, GRPO and evaluation seeds)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every configuration K times, with rollout.seed=0..K-1 (the same SFT checkpoint), and "
                         "read the checks on the means: one run's sampling draw moves held-out accuracy by up to 0.25")
    ap.add_argument("--skip-judge", action="store_true", help="skip (and mark) ablations that need the LLM judge")
    ap.add_argument("--judge-url", default="", help="use this OpenAI-compatible judge instead of starting one")
    ap.add_argument("--skip-sft", action="store_true", help="passed to every run: GRPO from the base model")
    ap.add_argument("--quiet", action="store_true", help="no progress bars inside the runs")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. grpo.steps=5")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats {a.repeats}: must be at least 1")
    if a.seed is not None:
        a.overrides = [*a.overrides, f"seed={a.seed}"]
    return a


def execute(plan: list, results: list[dict[str, Any]], a: argparse.Namespace, out: Path, session: Session) -> None:
    """Run the plan in order on one session; a failed run is recorded (and the cluster restarted), the rest go on."""
    from tqdm import tqdm

    base = [f for f, on in (("--skip-sft", a.skip_sft), ("--quiet", a.quiet)) if on]
    sft_ckpt: str | None = None
    for rec, cfg in tqdm(plan, desc="ablations", disable=a.quiet):
        try:
            extra = judge_overrides(rec, cfg, session, a.judge_url)
        except Exception as exc:  # noqa: BLE001 - no judge: the judge ablations fail, reported
            results.append({**rec, "status": "failed", "error": f"judge did not start: {exc}"[:300]})
            continue
        for k in range(a.repeats):
            sft_ckpt = _run_repeat(rec, k, base, extra, a, out, session, sft_ckpt, results)


def repeat_name(name: str, k: int) -> str:
    """The run name of repeat ``k`` of configuration ``name`` (repeat 0 keeps the configuration's name)."""
    return name if k == 0 else f"{name}@{k}"


def _run_repeat(rec: dict[str, Any], k: int, base: list[str], extra: list[str], a: argparse.Namespace, out: Path,
                session: Session, sft_ckpt: str | None, results: list[dict[str, Any]]) -> str | None:
    """Run repeat ``k`` of one configuration (``rollout.seed=k`` when repeating); returns the shared SFT checkpoint."""
    name = repeat_name(rec["name"], k)
    flags = run_flags(rec, base, bool(a.suite), sft_ckpt)
    seeds = [f"rollout.seed={k}"] if a.repeats > 1 else []
    print(f"[ablate] {name}: {rec['config']}" + (f" (from SFT {sft_ckpt})" if "--init-adapter" in flags else ""),
          flush=True)
    res = run_one(name, rec["config"], out / name, [*a.overrides, *extra, *seeds], flags)
    results.append({**rec, **res, "name": name, "config_name": rec["name"], "repeat": k,
                    "shared_sft": "--init-adapter" in flags})
    if res["status"] == "ok" and sft_ckpt is None and rec.get("sft") and "--init-adapter" not in flags:
        sft_ckpt = shared_sft(out / name)
    if res["status"] != "ok":
        session.restart()
    return sft_ckpt


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        paths = suite_configs(a.suite) if a.suite else [p for pat in a.configs.split(",") if pat
                                                         for p in sorted(glob.glob(pat))]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no ablation configs match {a.configs!r}", file=sys.stderr)
        return 2
    out = Path(a.out or f"runs/ablations-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    plan, results = plan_runs(paths, a.overrides, a.skip_judge)
    session = Session(plan[0][1], with_judge=any(r["judge"] for r, _ in plan) and not a.judge_url) if plan else None
    # The report is written while Ray is still up (a Ray Data thread that outlives ray.shutdown() can make Ray end
    # the process), and also when the runs are interrupted.
    try:
        if session:
            session.up()
            execute(plan, results, a, out, session)
    finally:
        from .ablate_report import write_report

        write_report(out, paths, results, a.overrides)
        if session:
            session.down()
    return 0 if all(r["status"] != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
