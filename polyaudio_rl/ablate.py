"""``python -m polyaudio_rl.ablate``: run the reward ablations one after another and compare them.

    python -m polyaudio_rl.ablate [--configs 'configs/ablations/*.yaml'[,MORE]] [--out DIR] [--skip-judge]
                                  [--judge-url URL] [--skip-sft] [--quiet] [key=value ...]

Every ablation config goes through the same driver (:func:`polyaudio_rl.train.main`), in its own run directory
``OUT/<name>``, with the ``key=value`` overrides applied to every run. All runs share one local Ray cluster (or the
one ``RAY_ADDRESS``/``ray_address`` names). Ablations whose correctness needs the LLM judge (``reward.correctness_mode``
judge/both) run last, against a judge this command starts with :mod:`eval.serve` (Ray Serve, 127.0.0.1, the policy's
checkpoint as judge model) — or against ``--judge-url`` — or are skipped and marked so with ``--skip-judge``.
A run that fails is recorded as failed (its traceback in ``OUT/<name>/error.txt``) and the others go on.

Writes ``OUT/ablations.json``, ``OUT/ablations.md`` (held-out rule correctness per task after GRPO, and the mean of
each reward component over the GRPO steps, per ablation) and ``OUT/ablations.png`` (grouped bars of both).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import math
import os
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """The Ray cluster shared by the runs, and the judge endpoint started on it when asked for."""

    def __init__(self, cfg: Any, with_judge: bool):
        self.cfg = cfg
        self.with_judge = with_judge
        self.judge_url = ""

    def up(self) -> None:
        from .train import connect_ray

        extra = JUDGE_CPUS if self.with_judge else 0
        connect_ray(replace(self.cfg, ray_num_cpus=(self.cfg.ray_num_cpus or os.cpu_count() or 1) + extra))

    def start_judge(self) -> str:
        """The tiny-checkpoint judge (and policy) via eval.serve on this cluster; returns its /v1 URL."""
        from eval import serve as eval_serve

        from .core.model import resolve_path

        if not self.judge_url:
            scfg = replace(self.cfg.serve, host="127.0.0.1", port=_free_port())
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
            "reward_means": means, "grpo_steps": len(steps), "wall_s": summary.get("wall_s")}


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


# ---------------------------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def tasks_of(results: list[dict[str, Any]]) -> list[str]:
    return sorted({t for r in results for t in ((r.get("eval_after") or {}).get("per_task") or {})})


def markdown(results: list[dict[str, Any]], overrides: list[str]) -> str:
    tasks = tasks_of(results)
    lines = ["# Reward ablations", "",
             f"Overrides on every run: `{' '.join(overrides) or '(none)'}`. Held-out = the bench split, greedy answers, "
             "rule-verified (polyaudio_rl.driver.evaluate); rewards = mean over GRPO steps of each step's mean.", "",
             "## Held-out rule correctness after GRPO", "",
             "| ablation | status | weights c/p/cons/f | correctness by | before | after | "
             + " | ".join(tasks) + " |",
             "|" + "---|" * (6 + len(tasks))]
    for r in results:
        w = r.get("weights") or {}
        wtxt = "/".join(f"{w.get(k, 0):g}" for k in REWARD_COMPONENTS) if w else "–"
        after = r.get("eval_after") or {}
        status = r["status"] + (f": {r['error']}" if r.get("error") else "") + (f": {r['note']}" if r.get("note") else "")
        lines.append(f"| {r['name']} | {status} | {wtxt} | {r.get('correctness_mode', '–')} | "
                     f"{_fmt((r.get('eval_before') or {}).get('accuracy'))} | {_fmt(after.get('accuracy'))} | "
                     + " | ".join(_fmt((after.get("per_task") or {}).get(t)) for t in tasks) + " |")
    comps = [*REWARD_COMPONENTS, "total"]
    lines += ["", "## Mean reward per component (GRPO steps)", "",
              "| ablation | " + " | ".join(comps) + " |", "|" + "---|" * (1 + len(comps))]
    for r in results:
        m = r.get("reward_means") or {}
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(m.get(c)) for c in comps) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: held-out correctness per task (+ overall), and mean reward per component, one bar per ablation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = tasks_of(results) + ["overall"]
    comps = [*REWARD_COMPONENTS, "total"]
    done = [r for r in results if r["status"] == "ok"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(10, 1.4 * (len(tasks) + len(comps))), 4.2))
    width = 0.8 / max(len(done), 1)
    for i, r in enumerate(done):
        after = r.get("eval_after") or {}
        acc = [(after.get("per_task") or {}).get(t, math.nan) for t in tasks[:-1]] + [after.get("accuracy", math.nan)]
        a.bar_label(a.bar(np.arange(len(tasks)) + i * width, acc, width, label=r["name"]), fmt="%.2f", fontsize=6)
        m = r.get("reward_means") or {}
        b.bar_label(b.bar(np.arange(len(comps)) + i * width, [m.get(c, math.nan) for c in comps], width,
                          label=r["name"]), fmt="%.2f", fontsize=6)
    for ax, names, title in ((a, tasks, "held-out rule correctness after GRPO"),
                             (b, comps, "mean reward per component (GRPO steps)")):
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    others = [f"{r['name']}: {r['status']}" for r in results if r["status"] != "ok"]
    if others:
        fig.text(0.01, 0.01, "not plotted — " + "; ".join(others), fontsize=7)
    a.set_ylim(0, 1.05)
    if done:
        a.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.05 if others else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the reward ablations through the training driver and compare them.")
    ap.add_argument("--configs", default="configs/ablations/*.yaml",
                    help="ablation configs: a glob, or several globs/paths separated by commas")
    ap.add_argument("--out", default=None, help="output directory (default runs/ablations-<timestamp>)")
    ap.add_argument("--skip-judge", action="store_true", help="skip (and mark) ablations that need the LLM judge")
    ap.add_argument("--judge-url", default="", help="use this OpenAI-compatible judge instead of starting one")
    ap.add_argument("--skip-sft", action="store_true", help="passed to every run: GRPO from the base model")
    ap.add_argument("--quiet", action="store_true", help="no progress bars inside the runs")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. grpo.steps=5")
    a = ap.parse_args(argv)

    paths = [p for pat in a.configs.split(",") if pat for p in sorted(glob.glob(pat))]
    if not paths:
        print(f"error: no ablation configs match {a.configs!r}", file=sys.stderr)
        return 2
    out = Path(a.out or f"runs/ablations-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    flags = [f for f, on in (("--skip-sft", a.skip_sft), ("--quiet", a.quiet)) if on]

    # Plan: read every config first (a broken one is reported, not fatal); judge ablations last.
    plan, results = [], []
    for p in paths:
        name = Path(p).stem
        try:
            cfg = load_config(p, a.overrides)
        except (ConfigError, ValueError, OSError) as exc:
            results.append({"name": name, "config": p, "status": "failed", "error": f"config: {exc}"})
            continue
        rec = {"name": name, "config": p, "weights": dict(cfg.reward.weights),
               "correctness_mode": cfg.reward.correctness_mode, "judge": needs_judge(cfg)}
        if rec["judge"] and a.skip_judge:
            results.append({**rec, "status": "skipped", "note": "needs the LLM judge (--skip-judge)"})
        else:
            plan.append((rec, cfg))
    plan.sort(key=lambda rc: rc[0]["judge"])

    # The report is written while Ray is still up (a Ray Data thread that outlives ray.shutdown() can make Ray end
    # the process), and also when the runs are interrupted.
    session = Session(plan[0][1], with_judge=any(r["judge"] for r, _ in plan) and not a.judge_url) if plan else None
    try:
        if session:
            session.up()
        from tqdm import tqdm

        for rec, cfg in tqdm(plan, desc="ablations", disable=a.quiet):
            extra: list[str] = []
            if rec["judge"]:
                try:
                    url = a.judge_url or session.start_judge()
                except Exception as exc:  # noqa: BLE001 - no judge: the judge ablations fail, reported
                    results.append({**rec, "status": "failed", "error": f"judge did not start: {exc}"[:300]})
                    continue
                extra = [f"reward.judge.base_url={url}"]
                if not a.judge_url:
                    extra.append(f"reward.judge.model={cfg.serve.judge_model_id}")
            print(f"[ablate] {rec['name']}: {rec['config']}", flush=True)
            res = run_one(rec["name"], rec["config"], out / rec["name"], [*a.overrides, *extra], flags)
            results.append({**rec, **res})
            if res["status"] != "ok":
                session.restart()
    finally:
        write_report(out, paths, results, a.overrides)
        if session:
            session.down()
    return 0 if all(r["status"] != "failed" for r in results) else 1


def write_report(out: Path, paths: list[str], results: list[dict[str, Any]], overrides: list[str]) -> None:
    order = {Path(p).stem: i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order.get(r["name"], 0))
    doc = {"overrides": overrides, "tasks": tasks_of(results), "ablations": results}
    (out / "ablations.json").write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(results, overrides)
    (out / "ablations.md").write_text(md)
    plot(results, out / "ablations.png")
    print(md)
    print(f"[ablate] wrote {out / 'ablations.md'}, {out / 'ablations.json'}, {out / 'ablations.png'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
