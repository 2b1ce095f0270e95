"""The run's web page, ``RUN_DIR/report.html``: what the policy heard and said, next to the numbers.

    python -m polyaudio_rl.report RUN_DIR        # (re)build RUN_DIR/report.html from what the run left

Written at the end of every training run (``logging.html_report``). One page, no network: the summary table, the
pictures (inlined), held-out accuracy per task, a listening table of the held-out items (an ``<audio>`` player per
clip, the question, the reference, the answer after SFT and after GRPO, right or wrong) and the rollout groups kept
during GRPO by step (players, the G completions, each reward component, the total, the advantage). Clips are the
files under ``RUN_DIR/samples/clips/`` (:mod:`polyaudio_rl.samples`); the page links them, so keep the page in its
run directory. Rows filter by task and by right/wrong with plain JavaScript. A run without samples, or with a clip
file missing, still renders: the gap is shown where the content would be.

:func:`wandb_tables` logs the same two tables to wandb (``wandb.Table`` with ``wandb.Audio``; offline unless the run's
``wandb_mode`` says otherwise). :func:`write_runs_page` is the page of several runs side by side (the ablation
runner's): per run its held-out accuracy and a link to its own page, then one listening table with every run's
answer to the same held-out items.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from .core import webpage as wp
from .core.webpage import Raw, esc, fnum
from .samples import HELDOUT, ROLLOUTS, clip_store, read_jsonl, samples_dir

PAGE = "report.html"
PICTURES = (("reward_curves.png", "GRPO reward curves"), ("per_task_accuracy.png", "held-out accuracy per task"),
            ("bench/chart.png", "PolyAudio-Bench per task (served adapter)"))


# ---------------------------------------------------------------------------------------------------- reading
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What the page shows, read from the run directory; anything missing is None / empty."""
    run_dir = Path(run_dir)
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None
    metrics = []
    if (run_dir / "metrics.jsonl").is_file():
        metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("phase", "grpo") == "grpo"]
    d = samples_dir(run_dir)
    return {"dir": run_dir, "summary": summary, "metrics": metrics, "heldout": read_jsonl(d / HELDOUT),
            "rollouts": read_jsonl(d / ROLLOUTS), "has_heldout": (d / HELDOUT).is_file(),
            "has_rollouts": (d / ROLLOUTS).is_file()}


def heldout_items(recs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per held-out item: its question, reference, clips, and ``answers[phase] = (answer, score)``."""
    items: dict[str, dict[str, Any]] = {}
    for r in recs:
        it = items.setdefault(r.get("id", "?"), {"id": r.get("id", "?"), "task": r.get("task", ""),
                                                 "question": r.get("question", ""), "reference": r.get("reference"),
                                                 "clips": r.get("clips", []), "answers": {}})
        it["answers"][r.get("phase", "?")] = (r.get("answer"), r.get("score"))
    return sorted(items.values(), key=lambda i: (i["task"], i["id"]))


def tasks_of(run: Mapping[str, Any]) -> list[str]:
    ts = {i.get("task", "") for i in run["heldout"]} | {r.get("task", "") for r in run["rollouts"] if "task" in r}
    return sorted(t for t in ts if t)


# ---------------------------------------------------------------------------------------------------- sections
def summary_section(run: Mapping[str, Any]) -> str:
    s = run["summary"]
    if s is None:
        return '<h2>Summary</h2><p class="gap">summary.json missing: the run did not finish (or is still running)</p>'
    rows = [["held-out items", (s.get("eval_after") or s.get("eval_before") or {}).get("n", "—")],
            ["chance (uniform guess)", fnum(s.get("chance"))],
            ["held-out accuracy after SFT", fnum((s.get("eval_before") or {}).get("accuracy"))],
            ["held-out accuracy after GRPO", fnum((s.get("eval_after") or {}).get("accuracy"))],
            ["policy version at the end", s.get("policy_version", "—")],
            ["wall time (s)", fnum(s.get("wall_s"), 0)]]
    curve = [r["reward/total"] for r in run["metrics"] if r.get("reward/total") is not None]
    if curve:
        k = max(1, min(10, len(curve) // 3))
        rows.append([f"reward/total first {k} → last {k} steps",
                     f"{sum(curve[:k]) / k:.3f} → {sum(curve[-k:]) / k:.3f} ({len(curve)} steps)"])
    bench = (s.get("bench") or {}).get("overall")
    if bench:
        rows.append(["PolyAudio-Bench rule accuracy (%) / judge (0–100)",
                     f"{fnum(bench.get('rule_acc'), 1)} / {fnum(bench.get('judge_100'), 1)}"])
    if s.get("preempted"):
        rows.append(["stopped early", f"by {s['preempted'].get('signal')} after step {s['preempted'].get('after_step')}"])
    return "<h2>Summary</h2>" + wp.table(["", "value"], rows)


def per_task_section(run: Mapping[str, Any]) -> str:
    """Held-out accuracy per task from the recorded answers (after SFT, after GRPO)."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in run["heldout"]:
        if r.get("score") is not None:
            by[(r.get("task", ""), r.get("phase", ""))].append(float(r["score"]))
    tasks = sorted({t for t, _ in by})
    if not tasks:
        return ('<h2>Held-out results per task</h2><p class="gap">no held-out answers recorded '
                '(samples/heldout.jsonl missing or empty)</p>')
    rows = []
    for t in tasks:
        sft, grpo = by.get((t, "after_sft"), []), by.get((t, "after_grpo"), [])
        n = max(len(sft), len(grpo))
        rows.append([t, n, fnum(sum(sft) / len(sft) if sft else None), fnum(sum(grpo) / len(grpo) if grpo else None)])
    return "<h2>Held-out results per task</h2>" + wp.table(["task", "items", "after SFT", "after GRPO"], rows)


def answer_cell(ans: tuple[Any, Any] | None) -> Raw:
    if ans is None:
        return Raw('<span class="gap">not evaluated</span>')
    text, score = ans
    v = wp.verdict_of(score)
    mark = {"right": "✓ right", "wrong": "✗ wrong"}.get(v, "not scored")
    return Raw(f'<span class="completion">{esc(text)}</span><br><span class="{v}">{mark}</span> '
               f"<small>(score {fnum(score, 2)})</small>")


def listening_section(run: Mapping[str, Any]) -> str:
    items = heldout_items(run["heldout"])
    head = "<h2>Listen: held-out items</h2>"
    if not items:
        return head + '<p class="gap">no held-out items recorded (samples/heldout.jsonl missing or empty)</p>'
    store, page_dir = clip_store(run["dir"]), run["dir"]
    rows = []
    for it in items:
        final = it["answers"].get("after_grpo") or it["answers"].get("after_sft")
        rows.append(wp.row([it["task"], Raw(wp.clip_cell(store, it["clips"], page_dir)), it["question"],
                            it["reference"], answer_cell(it["answers"].get("after_sft")),
                            answer_cell(it["answers"].get("after_grpo"))],
                           task=it["task"], verdict=wp.verdict_of(final[1] if final else None)))
    return (head + "<p>Right/wrong filters by the answer after GRPO (rule verifier, score ≥ 0.5).</p>"
            '<table class="listen"><thead><tr><th>task</th><th>clips</th><th>question</th><th>reference</th>'
            "<th>after SFT</th><th>after GRPO</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def group_block(store: wp.ClipStore, page_dir: Path, g: Mapping[str, Any]) -> str:
    comps = g.get("completions", [])
    names = sorted({k for c in comps for k in (c.get("rewards") or {})})
    rows = []
    for j, c in enumerate(comps, 1):
        rw = c.get("rewards") or {}
        verdict = wp.verdict_of(rw.get("correctness", c.get("total")))
        rows.append(wp.row([j, Raw(f'<span class="completion">{esc(c.get("text"))}</span>'),
                            *[fnum(rw.get(k)) for k in names], fnum(c.get("total")), fnum(c.get("advantage")),
                            c.get("tokens", "—")], task=g.get("task", ""), verdict=verdict))
    weights = ", ".join(f"{k} {v:g}" for k, v in sorted((g.get("weights") or {}).items()))
    head = ["#", "completion", *names, "total", "advantage", "tokens"]
    return (f'<div class="group"><h3>step {esc(g.get("step"))} · policy version {esc(g.get("policy_version"))} · '
            f'{esc(g.get("task"))} · {esc(g.get("sample_id"))}</h3>'
            + wp.clip_cell(store, g.get("clips", []), page_dir)
            + f'<p><b>Q:</b> {esc(g.get("question"))}<br><b>reference:</b> {esc(g.get("reference"))}'
            + (f"<br><small>reward weights: {esc(weights)}</small>" if weights else "")
            + (f'<br><span class="gap">{esc(g["note"])}</span>' if g.get("note") else "") + "</p>"
            + '<table><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def rollouts_section(run: Mapping[str, Any]) -> str:
    head = "<h2>Rollout groups kept during GRPO, by step</h2>"
    if not run["has_rollouts"]:
        return head + ('<p class="gap">no rollout samples in this run directory (samples/rollouts.jsonl missing: '
                       "logging.rollout_sample_every = 0, or a run from before samples were kept)</p>")
    store, page_dir = clip_store(run["dir"]), run["dir"]
    parts = [head, "<p>Right/wrong filters completions by their correctness reward (≥ 0.5).</p>"]
    for r in sorted(run["rollouts"], key=lambda r: (r.get("step", 0), r.get("group_id", ""))):
        if "skipped" in r:
            parts.append(f'<p class="gap">step {esc(r.get("step"))}: {esc(r["skipped"])}</p>')
        else:
            parts.append(group_block(store, page_dir, r))
    if len(parts) == 2:
        parts.append('<p class="gap">samples/rollouts.jsonl holds no groups</p>')
    return "".join(parts)


def pictures_section(run_dir: Path) -> str:
    figs = [wp.inline_png(run_dir / name, alt) for name, alt in PICTURES
            if (run_dir / name).is_file() or name != "bench/chart.png"]
    return "<h2>Pictures</h2>" + "".join(figs)


# ---------------------------------------------------------------------------------------------------- pages
def build(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` from what the run directory holds; returns its path."""
    run = load_run(run_dir)
    d = run["dir"]
    links = ('<p>Files: <a href="report.md">report.md</a>, <a href="summary.json">summary.json</a>, '
             '<a href="metrics.jsonl">metrics.jsonl</a>, <a href="samples/">samples/</a>, <a href="logs/">logs/</a>'
             + (', <a href="bench/report.html">bench/report.html</a>' if (d / "bench" / "report.html").is_file()
                else "") + "</p>")
    body = [links, summary_section(run), pictures_section(d), per_task_section(run), listening_section(run),
            rollouts_section(run)]
    return wp.write_page(d / PAGE, f"PolyAudio-RL run: {d.name}", body, tasks_of(run))


def page_bytes(run_dir: str | Path) -> int:
    """The page and what it loads beside it (the clips), in bytes."""
    d = Path(run_dir)
    return wp.dir_bytes([d / PAGE, samples_dir(d) / "clips"])


def write_runs_page(path: str | Path, title: str, runs: Mapping[str, str | Path], intro: str = "") -> Path:
    """One page comparing several runs (e.g. ablation arms) on the same held-out items: per run its accuracy per
    task and a link to its own report.html; then one listening table with every run's answer after GRPO. The page is
    written at ``path``; clips are linked from the runs' own ``samples/clips/`` (keep the folders together).
    ``intro`` is HTML put first (the caller's own summary table, built with :func:`polyaudio_rl.core.webpage.table`)."""
    path = Path(path)
    loaded = {name: load_run(d) for name, d in runs.items()}
    stores = [clip_store(r["dir"]) for r in loaded.values()]
    body = [intro] if intro else []
    rows = []
    for name, r in loaded.items():
        link = Raw(f'<a href="{esc(_rel(r["dir"] / PAGE, path.parent))}">{esc(name)}</a>'
                   if (r["dir"] / PAGE).is_file() else esc(name))
        acc = (r["summary"] or {}).get("eval_after", {}) or {}
        rows.append([link, fnum(acc.get("accuracy")),
                     ", ".join(f"{t} {v:.3f}" for t, v in sorted((acc.get("per_task") or {}).items())) or "—"])
    body.append("<h2>Runs</h2>" + wp.table(["run", "held-out after GRPO", "per task"], rows))
    body.append(_compare_table(loaded, stores, path.parent))
    tasks = sorted({t for r in loaded.values() for t in tasks_of(r)})
    return wp.write_page(path, title, body, tasks, verdicts=("right", "wrong", "mixed", "none"))


def _compare_table(loaded: Mapping[str, Mapping[str, Any]], stores: Sequence[wp.ClipStore], page_dir: Path) -> str:
    answers: dict[str, dict[str, Any]] = {}
    for name, r in loaded.items():
        for it in heldout_items(r["heldout"]):
            e = answers.setdefault(it["id"], {**it, "by_run": {}})
            e["by_run"][name] = it["answers"].get("after_grpo")
    if not answers:
        return '<h2>Listen: held-out items</h2><p class="gap">no run recorded held-out answers</p>'
    rows = []
    for it in sorted(answers.values(), key=lambda i: (i["task"], i["id"])):
        verdicts = {wp.verdict_of(a[1] if a else None) for a in it["by_run"].values()} - {"none"}
        verdict = verdicts.pop() if len(verdicts) == 1 else ("mixed" if verdicts else "none")
        clips = wp.clip_cell(wp.ClipStore(stores[0].root, also=[s.root for s in stores[1:]]), it["clips"], page_dir)
        rows.append(wp.row([it["task"], Raw(clips), it["question"], it["reference"],
                            *[answer_cell(it["by_run"].get(n)) for n in loaded]], task=it["task"], verdict=verdict))
    head = ["task", "clips", "question", "reference", *[f"{n} (after GRPO)" for n in loaded]]
    return ("<h2>Listen: held-out items, every run's answer</h2><p>Right/wrong: every run right / every run wrong; "
            "mixed: the runs disagree.</p><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _rel(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start).replace(os.sep, "/")


# ---------------------------------------------------------------------------------------------------- wandb
def _audio(store: wp.ClipStore, ref: str) -> Any:
    import wandb

    p = store.path(ref)
    return None if p is None else wandb.Audio(str(p), caption=ref)


def wandb_tables(run_dir: str | Path, mode: str = "offline") -> dict[str, int]:
    """Log the held-out listening table and the kept rollout groups to wandb (``wandb.Table`` + ``wandb.Audio``),
    in the run's own wandb run (same id as the metrics, resumed). Returns the number of rows per table."""
    import os

    import wandb

    run = load_run(run_dir)
    d, store = run["dir"], clip_store(run_dir)
    items = heldout_items(run["heldout"])
    groups = [g for g in run["rollouts"] if "skipped" not in g]
    k = max([len(i["clips"]) for i in items] + [len(g.get("clips", [])) for g in groups] + [1])
    clip_cols = [f"audio_{i}" for i in range(1, k + 1)]
    clips = lambda refs: [_audio(store, refs[i]) if i < len(refs) else None for i in range(k)]  # noqa: E731
    held = wandb.Table(columns=["id", "task", *clip_cols, "question", "reference", "answer_after_sft", "score_after_sft",
                                "answer_after_grpo", "score_after_grpo"])
    for it in items:
        sft, grpo = it["answers"].get("after_sft") or (None, None), it["answers"].get("after_grpo") or (None, None)
        held.add_data(it["id"], it["task"], *clips(it["clips"]), it["question"], it["reference"], sft[0], sft[1],
                      grpo[0], grpo[1])
    roll = wandb.Table(columns=["step", "policy_version", "task", "sample_id", *clip_cols, "question", "reference",
                                "completions", "rewards", "totals", "advantages"])
    for g in groups:
        cs = g.get("completions", [])
        roll.add_data(g.get("step"), g.get("policy_version"), g.get("task"), g.get("sample_id"), *clips(g.get("clips", [])),
                      g.get("question"), g.get("reference"), "\n".join(f"{j}: {c.get('text')}" for j, c in enumerate(cs, 1)),
                      json.dumps([c.get("rewards") for c in cs]), json.dumps([c.get("total") for c in cs]),
                      json.dumps([c.get("advantage") for c in cs]))
    os.environ.setdefault("WANDB_SILENT", "true")
    w = wandb.init(project="polyaudio-rl", dir=str(d), mode=mode, name=d.name, id=d.name.replace("/", "_"),
                   resume="allow")
    try:
        w.log({"heldout_items": held, "rollout_samples": roll})
    finally:
        w.finish()
    return {"heldout_items": len(items), "rollout_samples": len(groups)}


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="(Re)build RUN_DIR/report.html from a run directory.")
    ap.add_argument("run_dir", help="a training run directory (summary.json, metrics.jsonl, samples/)")
    ap.add_argument("--wandb", default="", choices=["", "offline", "online"],
                    help="also log the listening and rollout tables to wandb in this mode")
    a = ap.parse_args(argv)
    d = Path(a.run_dir)
    if not d.is_dir():
        print(f"error: {d}: no such run directory", file=sys.stderr)
        return 2
    out = build(d)
    print(f"{out}  ({page_bytes(d) / 1e6:.1f} MB with its clips)")
    if a.wandb:
        print(f"wandb tables: {wandb_tables(d, a.wandb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
