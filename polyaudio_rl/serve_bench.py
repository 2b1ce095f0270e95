"""After training: serve the trained adapter with ``eval.serve`` and benchmark that endpoint with ``eval.bench``.

The demo's last stage (``eval.serve_bench: true`` in ``configs/demo.yaml``), and what a user does by hand after a
production run (README "Commands"). On the Ray cluster the run already holds — its rollout, reward and learner actors
are gone by then — ``eval.serve.start`` merges the last GRPO adapter into the base checkpoint, deploys the policy and
the judge behind the OpenAI-compatible ingress (Ray Serve LLM, vLLM), and ``eval.bench.evaluate`` sends the bench
split to it over HTTP: rule accuracy per task (the tasks' own verifiers) and the judge's 1–5 score. The judge is
whatever ``serve_bench_judge`` names; on the embedded default it is the tiny random checkpoint itself, so its scores
measure nothing and the report says so.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core.config import Config

TINY_JUDGE_NOTE = "the judge is the tiny random checkpoint (embedded default): its scores are not a measurement"


def serve_and_bench(cfg: Config, run_dir: Path, adapter_dir: str, model_path: str, progress: bool = True,
                    console: Any = None) -> dict[str, Any]:
    """Serve ``model_path`` + ``adapter_dir`` (policy) and the judge, run the bench split against them, stop the
    app; returns ``eval.bench``'s report (``tasks``, ``overall``, ``meta``) with ``url`` and ``judge_note`` added.
    Results, ``report.md`` and ``chart.png`` are written to ``RUN_DIR/bench/``."""
    from ray import serve

    from eval import serve as eval_serve
    from eval.bench import evaluate

    say = console.print if console is not None else print
    judge = cfg.eval.serve_bench_judge or model_path
    scfg = replace(cfg.serve, merged_dir=str(run_dir / "serve" / "merged"))
    with contextlib.ExitStack() as quiet:
        if console is not None:  # Serve's deployment dumps, the merge's prints and bars: logs/serve.log
            console.quiet_loggers()  # ray.serve attached its own console handler on import
            quiet.enter_context(contextlib.redirect_stdout(console.file("serve")))
            quiet.enter_context(contextlib.redirect_stderr(console.file("serve")))
        url = eval_serve.start(scfg, model_path, judge, adapter=adapter_dir)
    say(f"   serving the trained adapter at {url} (policy '{scfg.policy_model_id}', judge '{scfg.judge_model_id}')")
    ecfg = replace(cfg.eval, answer_tag=cfg.data.answer_tag)
    try:
        report = asyncio.run(evaluate(cfg.data.bench_dir, url, url, str(run_dir / "bench"), ecfg, cfg.reward.judge,
                                      scfg.policy_model_id, scfg.judge_model_id, progress=progress))
    finally:
        try:
            serve.delete(eval_serve.APP_NAME)
        except Exception as exc:  # noqa: BLE001 - the numbers are in; a slow teardown must not lose them
            say(f"   [serve] could not delete the app: {exc}")
    report["url"] = url
    report["judge_note"] = TINY_JUDGE_NOTE if Path(judge).resolve() == Path(model_path).resolve() else ""
    return report


def bench_lines(report: dict[str, Any]) -> list[str]:
    """The console table: rule accuracy and judge score per task, overall first."""
    from eval.report import fmt

    from .console import table

    ov = report["overall"]
    rows = [["all", fmt(ov["rule_acc"]), fmt(ov["judge_100"]), f"{ov['scored']}/{ov['items']}", str(ov["failed"])]]
    for name, t in report["tasks"].items():
        rows.append([name, fmt(t["rule_acc"]), fmt(t["judge_100"]), f"{t['scored']}/{t['items']}", str(t["failed"])])
    out = table(rows, ["eval.bench on the served adapter", "rule acc. %", "judge 0-100", "scored", "failed"])
    if report.get("judge_note"):
        out.append(f"({report['judge_note']})")
    return out
