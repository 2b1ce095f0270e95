"""The PolyAudio-Bench report: per-task and overall numbers (:func:`summarize`), ``report.md`` (Tables 4 and 5 layout),
``chart.png`` and ``report.html`` (:func:`write_html`: every item with a player per clip, the answer, the judge score
and the rule verdict; clips stored once under ``clips/`` beside it); the numbers are defined in :mod:`eval.bench`'s
docstring."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from polyaudio_rl.core.schema import TASKS, Sample

TASK_TITLES = {
    "comparison": "Comparison/Difference", "temporal_grounding": "Temporal Grounding", "needle_qa": "Needle QA",
    "speaker_linking": "Cross-clip Speaker Linking", "odd_one_out": "Odd-one-out",
    "entailment": "Multi-Audio Entailment", "common_keyword": "Common Keyword Extraction",
    "chronological_ordering": "Chronological Ordering", "captioning": "Multi-audio Captioning",
    "factual_consistency": "Factual Consistency", "counting": "Counting across clips",
}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def judge_to_100(mean_score: float | None) -> float | None:
    """1–5 → 0–100 linearly: 100 · (s − 1) / 4."""
    return None if mean_score is None else 100.0 * (mean_score - 1.0) / 4.0


def summarize(records: dict[str, dict[str, Any]], samples: Sequence[Sample], bad_rows: Sequence[dict] = ()) -> dict:
    """Per-task and overall numbers from the records of ``samples`` (see the module docstring)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s.task].append(records.get(s.id) or {"id": s.id, "status": "missing"})
    tasks: dict[str, dict[str, Any]] = {}
    for task in [t for t in TASKS if t in by_task] + sorted(t for t in by_task if t not in TASKS):
        recs = by_task[task]
        ok = [r for r in recs if r.get("status") == "ok"]
        jm = _mean([r["judge_score"] for r in ok])
        rule = [r["rule_score"] for r in recs if r.get("rule_score") is not None and r.get("status") == "ok"]
        tasks[task] = {
            "title": TASK_TITLES.get(task, task), "items": len(recs), "scored": len(ok),
            "failed": sum(1 for r in recs if r.get("status") == "failed"),
            "missing": sum(1 for r in recs if r.get("status") == "missing"),
            "judge_mean": jm, "judge_100": judge_to_100(jm), "judge_x20": None if jm is None else 20.0 * jm,
            "rule_acc": None if not rule else 100.0 * _mean(rule),
        }
    all_ok = [r for recs in by_task.values() for r in recs if r.get("status") == "ok"]

    def macro(key: str) -> float | None:
        vals = [t[key] for t in tasks.values() if t[key] is not None]
        return _mean(vals)

    jm_micro = _mean([r["judge_score"] for r in all_ok])
    failures: dict[str, int] = defaultdict(int)
    for recs in by_task.values():
        for r in recs:
            if r.get("status") == "failed":
                failures[r.get("stage", "?")] += 1
    return {
        "tasks": tasks,
        "overall": {
            "items": len(samples), "scored": len(all_ok), "failed": sum(failures.values()),
            "failed_by_stage": dict(failures), "bad_rows": len(bad_rows),
            "judge_mean": macro("judge_mean"), "judge_100": macro("judge_100"), "judge_x20": macro("judge_x20"),
            "rule_acc": macro("rule_acc"),
            "overall_micro": {"judge_mean": jm_micro, "judge_100": judge_to_100(jm_micro),
                              "rule_acc": None if not all_ok else 100.0 * _mean([r["rule_score"] for r in all_ok])},
        },
        "failed_items": [{"id": r["id"], "task": r.get("task"), "stage": r.get("stage"), "error": r.get("error")}
                         for recs in by_task.values() for r in recs if r.get("status") == "failed"],
        "bad_rows": list(bad_rows),
        "normalisation": "judge_100 = 100 * (mean judge score - 1) / 4 (1..5 -> 0..100); judge_x20 = 20 * mean; "
                         "overall = unweighted mean over tasks",
    }


def fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def render_markdown(report: dict) -> str:
    meta, ov = report.get("meta", {}), report["overall"]
    lines = [
        f"# PolyAudio-Bench — {meta.get('policy_model', 'policy')} ({meta.get('protocol', 'native')})", "",
        f"Policy `{meta.get('policy_url', '')}` · judge `{meta.get('judge_model', '')}` at `{meta.get('judge_url', '')}` "
        f"· prompts {meta.get('judge_prompts', [])} averaged.", "",
        "Judge score 1–5 (mean over the paraphrased prompts), **normalised 0–100 as 100·(score−1)/4**; "
        "rule accuracy = 100 · mean rule-verifier score against the ground-truth key.", "",
        "## Overall (Table 4 layout)", "",
        "| Benchmark | Judge (0–100) | Judge mean (1–5) | Rule acc. (%) | Scored | Failed |",
        "|---|---|---|---|---|---|",
        f"| PolyAudio-Bench | {fmt(ov['judge_100'])} | {fmt(ov['judge_mean'], 2)} | {fmt(ov['rule_acc'])} | "
        f"{ov['scored']}/{ov['items']} | {ov['failed']} |", "",
        "## Per task (Table 5 layout)", "",
        "| Task | Judge (0–100) | Judge mean (1–5) | Rule acc. (%) | Scored | Failed |", "|---|---|---|---|---|---|",
    ]
    for t in report["tasks"].values():
        lines.append(f"| {t['title']} | {fmt(t['judge_100'])} | {fmt(t['judge_mean'], 2)} | {fmt(t['rule_acc'])} | "
                     f"{t['scored']}/{t['items']} | {t['failed']} |")
    lines += ["", f"Column means: overall = unweighted mean over tasks (item-weighted: judge "
                  f"{fmt(ov['overall_micro']['judge_100'])}, rule {fmt(ov['overall_micro']['rule_acc'])}).", ""]
    if report["failed_items"] or report["bad_rows"]:
        lines += ["## Not scored", "", "Failed items are excluded from the means (never counted as 0).", ""]
        for f in report["failed_items"][:50]:
            lines.append(f"- `{f['id']}` ({f['task']}, {f['stage']}): {str(f['error'])[:200]}")
        for b in report["bad_rows"][:50]:
            lines.append(f"- unreadable row `{b['id']}` in {b['file']}: {b['error'][:200]}")
        lines.append("")
    return "\n".join(lines)


def plot_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].values())
    names = [t["title"] for t in tasks] + ["Overall"]
    judge = [t["judge_100"] for t in tasks] + [report["overall"]["judge_100"]]
    rule = [t["rule_acc"] for t in tasks] + [report["overall"]["rule_acc"]]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], [v if v is not None else 0 for v in judge], w, label="Judge (0–100)")
    ax.bar([x + w / 2 for x in xs], [v if v is not None else 0 for v in rule], w, label="Rule accuracy (%)")
    for off, vals in ((-w / 2, judge), (w / 2, rule)):
        for x, v in zip(xs, vals):
            ax.text(x + off, (v or 0) + 1, "n/a" if v is None else f"{v:.0f}", ha="center", fontsize=6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score")
    meta = report.get("meta", {})
    ax.set_title(f"PolyAudio-Bench per task — {meta.get('policy_model', '')} ({meta.get('protocol', 'native')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out: Path, records: dict[str, dict[str, Any]] | None = None,
                 samples: Sequence[Sample] = ()) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report) + ("\nEvery item with its clips: [report.html](report.html).\n"
                                                              if samples else ""))
    plot_chart(report, out / "chart.png")
    if samples:
        write_html(report, records or {}, samples, out)


def _item_row(store: Any, out: Path, s: Sample, rec: dict[str, Any]) -> str:
    from polyaudio_rl.core import webpage as wp

    refs = [store.put_bytes(c.audio) for c in s.clips if c.audio]
    status = rec.get("status", "missing")
    rule = rec.get("rule_score")
    verdict = wp.verdict_of(rule) if status == "ok" else "none"
    mark = {"right": "✓ right", "wrong": "✗ wrong"}.get(verdict, "not scored")
    answer = (wp.Raw(f'<span class="completion">{wp.esc(rec.get("answer"))}</span>') if status == "ok" else
              wp.Raw(f'<span class="gap">{wp.esc(status)} ({wp.esc(rec.get("stage", ""))}): '
                     f'{wp.esc(str(rec.get("error", ""))[:300])}</span>'))
    return wp.row([s.task, wp.Raw(wp.clip_cell(store, refs, out)), s.question, s.answer, answer,
                   fmt(rec.get("judge_score"), 2), wp.Raw(f'<span class="{verdict}">{mark}</span> '
                                                          f"<small>({fmt(rule, 2)})</small>")],
                  task=s.task, verdict=verdict)


def write_html(report: dict, records: dict[str, dict[str, Any]], samples: Sequence[Sample], out: Path) -> Path:
    """``out/report.html``: the overall and per-task numbers, then one row per item (players, question, reference,
    answer, judge score 1–5, rule verdict), filterable by task and right/wrong (rule score >= 0.5)."""
    from polyaudio_rl.core import webpage as wp

    store = wp.ClipStore(Path(out) / "clips")
    ov, meta = report["overall"], report.get("meta", {})
    head = wp.table(["benchmark", "judge (0–100)", "judge mean (1–5)", "rule acc. (%)", "scored", "failed"],
                    [["PolyAudio-Bench", fmt(ov["judge_100"]), fmt(ov["judge_mean"], 2), fmt(ov["rule_acc"]),
                      f"{ov['scored']}/{ov['items']}", ov["failed"]]])
    tasks = wp.table(["task", "judge (0–100)", "judge mean (1–5)", "rule acc. (%)", "scored", "failed"],
                     [[t["title"], fmt(t["judge_100"]), fmt(t["judge_mean"], 2), fmt(t["rule_acc"]),
                       f"{t['scored']}/{t['items']}", t["failed"]] for t in report["tasks"].values()])
    rows = "".join(_item_row(store, Path(out), s, records.get(s.id) or {}) for s in samples)
    body = [f"<p>Policy {wp.esc(meta.get('policy_model', ''))} at {wp.esc(meta.get('policy_url', ''))} · judge "
            f"{wp.esc(meta.get('judge_model', ''))} · protocol {wp.esc(meta.get('protocol', 'native'))}. Numbers: "
            '<a href="report.md">report.md</a>.</p>', "<h2>Overall</h2>", head, "<h2>Per task</h2>", tasks,
            wp.inline_png(Path(out) / "chart.png", "judge and rule accuracy per task"),
            "<h2>Listen: every item</h2><table><thead><tr><th>task</th><th>clips</th><th>question</th>"
            "<th>reference</th><th>answer</th><th>judge (1–5)</th><th>rule verdict</th></tr></thead><tbody>"
            + rows + "</tbody></table>"]
    order = [t for t in TASKS if any(s.task == t for s in samples)]
    order += sorted({s.task for s in samples} - set(order))
    return wp.write_page(Path(out) / "report.html", f"PolyAudio-Bench — {meta.get('policy_model', 'policy')}", body,
                         order)
