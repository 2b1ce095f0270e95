"""The end of a run: ``RUN_DIR/summary.json``, the console's closing table (held-out accuracy per task: chance,
after SFT, after GRPO; the reward curve's ends) and ``RUN_DIR/report.md``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_summary(summary: dict[str, Any], run_dir: Path, cfg: Any, con: Any, bench_rows: list[str]) -> None:
    """Write summary.json, print the closing table and write the report (a report that fails is said, the run
    still succeeded)."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = summary_lines(summary, run_dir)
    for line in [*lines[:-1], *bench_rows, lines[-1]]:
        con.print("   " + line)
    try:
        from .demo import write_report

        report = write_report(run_dir, cfg, summary, lines[:-1], bench_rows)
        con.print(f"   report: {report.with_name('report.html') if cfg.logging.html_report else report}")
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say why the report is missing
        con.log("train", f"report failed: {exc!r}")
        con.print(f"   report: not written ({type(exc).__name__}: {exc}; see {con.path('train')})")


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
    from eval.heldout import control_line

    if after and control_line(after, summary.get("chance")):
        out.append(control_line(after, summary.get("chance")))
    if before and after:
        d = after["accuracy"] - before["accuracy"]
        out.append(f"GRPO changed held-out accuracy by {d:+.3f}"
                   + (f"; {after['accuracy'] - summary['chance']:+.3f} over chance" if summary.get("chance") is not None
                      else ""))
    out.append(f"run directory: {run_dir}  (summary.json, metrics.jsonl, reward_curves.png, logs/)")
    return out
