"""The chaos harness's report: a trial's record (victims, moments aimed at and landed in, verdict), a line per
trial, the table, the summary line, chaos.json / chaos.md / chaos.png, and a report rebuilt from chaos.json."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .moments import Action, grpo_start, landed, timeline_spans

ROOT = Path(__file__).resolve().parents[2]

def trial_record(i: int, plan: list[Action], run_dir: Path, segs: list[Any], verdict: dict[str, Any],
                 ckpt_steps: list[int]) -> dict[str, Any]:
    """chaos.json's entry of a trial: victims and moments (aimed at, landed in) of what fired, and the verdict."""
    first = segs[0]
    spans = timeline_spans(run_dir, "timeline.first.json")
    fired = [a for a in first.actions if a["fired"]]
    victims = [f"{a['kind']}:{a['pid']}" for a in fired]
    t0 = grpo_start(first.events, first.start)
    moments = [{"aim": a["aim"], "landed": landed(a["t"], first.events, spans, ckpt_steps),
                "t_s": round(a["t"] - t0, 2), "title": a["title"]} for a in fired]
    missed = [{"aim": a["aim"], "why": a.get("error", "")} for a in first.actions if not a["fired"]]
    return {"trial": i, "plan": [asdict(a) for a in plan], "victims": victims, "moments": moments,
            "not_fired": missed, **verdict, "run_dir": str(run_dir),
            "timeline": [{"rc": s.rc, "start": s.start, "wall_s": s.wall_s, "events": s.events,
                          "actions": [{k: v for k, v in a.items() if k != "action"} for a in s.actions]}
                         for s in segs]}


def progress_line(t: dict[str, Any], n: int) -> str:
    kills = "; ".join(f"{v} aimed at {m['aim']}, landed in {m['landed']}" for v, m in zip(t["victims"], t["moments"]))
    diff = "n/a" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
    verdict = "ok" if t["ok"] else "FAILED: " + " | ".join(t["errors"])[:300]
    return (f"trial {t['trial'] + 1}/{n}: {kills or 'nothing fired'} -> rc {t['rcs']}, diff {diff}, ids "
            f"{'ok' if t['ids_ok'] else 'WRONG'}, rows {'ok' if t['rows_ok'] else t['rows']}, recoveries "
            f"{t['recoveries']}, {t['wall_s']:.0f} s: {verdict}")


def table(trials: list[dict[str, Any]]) -> str:
    head = f"{'#':>2}  {'ok':<4} {'victims':<28} {'moments (aimed -> landed)':<70} {'diff':>8}  {'rec':>3}  rc"
    lines = [head, "-" * len(head)]
    for t in trials:
        ms = [f"{m['aim']} -> {m['landed']}" for m in t["moments"]]
        diff = "n/a" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
        for j in range(max(1, len(ms))):
            first = j == 0
            lines.append(f"{t['trial'] + 1 if first else '':>2}  {('yes' if t['ok'] else 'NO') if first else '':<4} "
                         f"{(t['victims'][j] if j < len(t['victims']) else ''):<28} {(ms[j] if ms else '-')[:70]:<70} "
                         f"{diff if first else '':>8}  {t['recoveries'] if first else '':>3}  "
                         f"{t['rcs'] if first else ''}")
    return "\n".join(lines)


def summary_line(trials: list[dict[str, Any]], lag: int, seed: int) -> str:
    from collections import Counter

    kinds = Counter(v.split(":")[0] for t in trials for v in t["victims"])
    landed_in = [("driver" if v.startswith("driver:") else "kill", "checkpoint" in m["landed"] or "sync" in m["landed"])
                 for t in trials for v, m in zip(t["victims"], t["moments"])]
    kills, terms = (sum(hot for what, hot in landed_in if what == w) for w in ("kill", "driver"))
    return (f"chaos: {sum(t['ok'] for t in trials)}/{len(trials)} trials ok (lag {lag}, seed {seed}); victims "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            + f"; {kills} kill(s) and {terms} SIGTERM(s) landed in a checkpoint or a sync")


def markdown(report: dict[str, Any], commit: str) -> str:
    """The result as a Markdown table for docs/reliability.md: one row per trial, with date and commit."""
    head = (f"`--trials {len(report['trials'])} --seed {report['seed']} --lag {report['lag']}`, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}: **{report['summary']}**\n\n"
            "| trial | ok | victims | moments (aimed at → landed in) | max abs diff | recoveries | error |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for t in report["trials"]:
        acts = [a for a in t["timeline"][0]["actions"] if a.get("fired")]
        vic = ", ".join(("SIGTERM driver" if a["kind"] == "driver" else f"{a['kind']} (pid {a['pid']})") for a in acts)
        mom = "; ".join(f"{m['aim']} → {m['landed']} ({m['t_s']:.1f} s into GRPO)" for m in t["moments"])
        diff = "–" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.1e}"
        err = " / ".join(e.replace("|", "\\|")[:160] for e in t["errors"])
        rows.append(f"| {t['trial'] + 1} | {'yes' if t['ok'] else '**no**'} | {vic} | {mom} | {diff} | "
                    f"{t['recoveries']} | {err} |")
    return head + "\n".join(rows) + "\n"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COLORS = {"learner": "#d62728", "rollout": "#1f77b4", "reward": "#2ca02c", "data": "#9467bd", "driver": "#000000"}


def _plot_segments(ax: Any, y: float, segs: list[dict[str, Any]], moments: list[dict[str, Any]]) -> float:
    """One trial's row, 0 = its first process's held-out evaluation row (GRPO starts): each process as a bar, step
    rows as ticks, checkpoints as triangles, kills and SIGTERMs as markers labelled with where they landed. Returns
    the row's last time."""
    first = segs[0]
    t0 = grpo_start(first["events"], first["start"])
    labels = iter(m["landed"] for m in moments)
    for seg in segs:
        ax.barh(y, seg["wall_s"], left=seg["start"] - t0, height=0.5, color="#eeeeee", edgecolor="#999999")
        for what, step, t in seg["events"]:
            if what == "row" and step > 0:
                ax.plot([t - t0] * 2, [y - 0.25, y + 0.25], color="#999999", lw=0.8)
            elif what == "ckpt":
                ax.plot(t - t0, y + 0.3, marker="v", color="#555555", ms=4)
        for a in seg["actions"]:
            if a.get("fired"):
                ax.plot(a["t"] - t0, y, marker="x" if a["kind"] == "driver" else "o", ms=9, color=COLORS[a["kind"]],
                        mec="black")
                ax.annotate(next(labels, "").split(" (")[0], (a["t"] - t0, y - 0.3), fontsize=7, ha="center",
                            va="top")
    return segs[-1]["start"] + segs[-1]["wall_s"] - t0


def plot(trials: list[dict[str, Any]], ref: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.6 * (len(trials) + 1)))
    rows = [("reference", ref["timeline"], [])] + [
        (f"trial {t['trial'] + 1} {'ok' if t['ok'] else 'FAILED'}", t["timeline"], t["moments"]) for t in trials]
    end = max(_plot_segments(ax, -y, segs, ms) for y, (_, segs, ms) in enumerate(rows))
    ax.set_xlim(-5, end + 2)
    ax.set_ylim(-len(rows) + 0.3, 0.7)
    ax.set_yticks([-y for y in range(len(rows))], [r[0] for r in rows])
    for lab in ax.get_yticklabels():
        lab.set_color("#b00000" if "FAILED" in lab.get_text() else "black")
    ax.set_xlabel("s since GRPO started (the held-out evaluation's row); ticks: step rows; triangles: checkpoints; "
                  "bars: the run, its --resume")
    handles = [Line2D([], [], marker="x" if k == "driver" else "o", ls="", color=c, mec="black",
                      label="SIGTERM driver" if k == "driver" else f"SIGKILL {k}") for k, c in COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def earlier_trials(out: Path, report: dict[str, Any], chosen: list[int]) -> list[dict[str, Any]]:
    """The trials an earlier ``--only`` invocation of the same plan (seed, lag, steps, command) wrote to
    OUT/chaos.json and this one does not run again: one report for an invocation split into parts."""
    try:
        old = json.loads((out / "chaos.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    same = ("seed", "lag", "steps", "checkpoint_every", "config", "overrides", "start")
    if any(old.get(k) != report[k] for k in same):
        return []
    return [{"commit": old.get("commit", "unknown"), **t} for t in old["trials"] if t["trial"] not in chosen]


def write_report(out: Path, report: dict[str, Any]) -> None:
    """chaos.json, chaos.md, chaos.png; the table and the summary line on the console."""
    stopped = report.pop("partial", False)
    report["summary"] = summary_line(report["trials"], report["lag"], report["seed"]) + (
        " (the invocation was stopped before its other trials)" if stopped else "")
    (out / "chaos.json").write_text(json.dumps(report, indent=1, default=str))
    commits = sorted({t.get("commit", report.get("commit", "unknown")) for t in report["trials"]})
    (out / "chaos.md").write_text(markdown(report, ", ".join(commits) or report.get("commit", "unknown")))
    plot(report["trials"], report["reference"], out / "chaos.png", report["summary"])
    print(table(report["trials"]))
    print(report["summary"])
    print(f"  {out / 'chaos.json'}, {out / 'chaos.png'}, {out / 'chaos.md'}")


def report_only(out: Path) -> int:
    """Rebuild the report of a finished invocation from its chaos.json and its trials' timelines (where each
    moment landed is derived data)."""
    report = json.loads((out / "chaos.json").read_text())
    every, steps = report["checkpoint_every"], report["steps"]
    ckpt_steps = [s for s in range(1, steps + 1) if (every and s % every == 0) or s == steps]
    for t in report["trials"]:
        first = t["timeline"][0]
        spans = timeline_spans(Path(t["run_dir"]), "timeline.first.json")
        events = [tuple(e) for e in first["events"]]
        fired = [a for a in first["actions"] if a.get("fired")]
        for m, a in zip(t["moments"], fired):
            m["landed"] = landed(a["t"], events, spans, ckpt_steps)
            m["t_s"] = round(a["t"] - grpo_start(events, first["start"]), 2)
    write_report(out, report)
    return 0
