"""The ablation report: ``ablations.json``, ``ablations.md`` and the PNGs, from the runs' records.

Per run (held-out bench split, greedy answers, after GRPO; definitions in :mod:`eval.heldout_metrics`): accuracy
(exact rule), irrelevant_clip_rate, paraphrase_agreement (and its chance-corrected paraphrase_kappa), format_rate,
mean completion length, the "does it listen" controls (:mod:`eval.listen`), and the mean of each reward component
over the GRPO steps. The paper's Table 6 rows: LoRA SFT (the shared SFT checkpoint's held-out accuracy, before GRPO),
SFT + GRPO (``paper_mix``), GRPO only (``grpo_only``). ``checks`` reads issue 26's expected directions off the table
(met or not, with numbers).
With ``--repeats K`` (several runs of a configuration, other sampling seeds) Table 6, the checks and the plot read the
per-configuration means (``configs`` in ``ablations.json``, with each figure's standard deviation and run count).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from eval.heldout_metrics import METRICS

from .core.config.reward import REWARD_COMPONENTS
from .report import write_runs_page



def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def run_row(r: dict[str, Any]) -> dict[str, Any]:
    """One run's figures for the ``runs`` table (None where the run has no such figure)."""
    after, before = r.get("eval_after") or {}, r.get("eval_before") or {}
    ctrl = after.get("controls") or {}
    row = {k: after.get(k) for k in METRICS}
    row.update(status=r.get("status"), weights=r.get("weights"), sft=r.get("sft"),
               accuracy_before=before.get("accuracy"), chance=r.get("chance"),
               silence_accuracy=(ctrl.get("silence") or {}).get("accuracy"),
               shuffle_accuracy=(ctrl.get("shuffle") or {}).get("accuracy"), reward_means=r.get("reward_means"))
    if r.get("error"):
        row["error"] = r["error"]
    return row


MEANED = (*METRICS, "accuracy_before", "silence_accuracy", "shuffle_accuracy")


def config_rows(results: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration, the mean of its finished runs' figures (``<key>_std``: their standard deviation, ``n``: how
    many); a configuration run once is its run's row, unchanged; one with no finished run keeps its first record."""
    groups: dict[str, list[str]] = {}
    for r in results:
        groups.setdefault(r.get("config_name", r["name"]), []).append(r["name"])
    out: dict[str, dict[str, Any]] = {}
    for cfg, names in groups.items():
        ok = [runs[n] for n in names if runs[n].get("status") == "ok"]
        if len(names) == 1 or not ok:
            out[cfg] = runs[names[0]]
            continue
        row = {**ok[0], "n": len(ok), "runs": names, "reward_means": None}
        for k in MEANED:
            vals = [r[k] for r in ok if r.get(k) is not None]
            row[k] = sum(vals) / len(vals) if vals else None
            row[f"{k}_std"] = (math.sqrt(sum((v - row[k]) ** 2 for v in vals) / (len(vals) - 1))
                               if len(vals) > 1 else None)
        out[cfg] = row
    return out


def table6(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Table 6's shape on held-out accuracy: LoRA SFT (before GRPO, from the SFT-sharing runs), SFT + GRPO
    (paper_mix after GRPO), GRPO only (grpo_only after GRPO)."""
    sft = next((r["accuracy_before"] for r in runs.values() if r.get("sft") and r.get("accuracy_before") is not None),
               None)
    return {"LoRA SFT": sft, "SFT + GRPO": (runs.get("paper_mix") or {}).get("accuracy"),
            "GRPO only": (runs.get("grpo_only") or {}).get("accuracy")}


def _se(r: dict[str, Any] | None, key: str) -> float | None:
    """The standard error of a configuration's mean figure (its runs' standard deviation / sqrt(n)); None for one run."""
    sd, n = (r or {}).get(f"{key}_std"), (r or {}).get("n")
    return None if sd is None or not n else sd / math.sqrt(n)


def _check(name: str, a: dict[str, Any] | None, b: dict[str, Any] | None, key: str, margin: float,
           text: str) -> dict[str, Any]:
    """``a[key] − b[key] ≥ margin``. With repeated runs on both sides also ``se``, the standard error of the
    difference (sqrt(se_a² + se_b²)), and ``decided``: whether the difference lies at least two standard errors from
    the margin, i.e. whether these runs can tell met from missed at all (None when either side ran once)."""
    va, vb = (a or {}).get(key), (b or {}).get(key)
    ok = None if va is None or vb is None else va - vb >= margin - 1e-9
    out: dict[str, Any] = {"check": name, "expected": text, "value": None if ok is None else round(va - vb, 6),
                           "met": ok, "se": None, "decided": None}
    sa, sb = _se(a, key), _se(b, key)
    if ok is not None and sa is not None and sb is not None:
        out["se"] = round(math.sqrt(sa ** 2 + sb ** 2), 6)
        out["decided"] = abs(va - vb - margin) >= 2 * out["se"]
    return out


def checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 26's expected directions, each with its difference and whether it holds (None: a run is missing)."""
    singles = [runs[n] for n in ("correctness_only", "plus_parsimony", "plus_consistency")
               if (runs.get(n) or {}).get("accuracy") is not None]
    best = max(singles, key=lambda r: r["accuracy"]) if singles else None
    out = [
        _check("parsimony", runs.get("correctness_only"), runs.get("plus_parsimony"), "irrelevant_clip_rate", 0.2,
               "irrelevant_clip_rate: correctness_only − plus_parsimony ≥ 0.2"),
        _check("consistency", runs.get("plus_consistency"), runs.get("correctness_only"), "paraphrase_agreement", 0.1,
               "paraphrase_agreement: plus_consistency − correctness_only ≥ 0.1"),
        _check("paper_mix", runs.get("paper_mix"), best, "accuracy", -0.02,
               "accuracy: paper_mix − best single-term run ≥ −0.02"),
        _check("table6", runs.get("paper_mix"), runs.get("grpo_only"), "accuracy", 1e-9,
               "accuracy: SFT + GRPO (paper_mix) − GRPO only > 0"),
    ]
    for n, r in runs.items():
        if r.get("silence_accuracy") is not None and r.get("chance") is not None:
            d = abs(r["silence_accuracy"] - r["chance"])
            out.append({"check": f"silence:{n}", "expected": "abs(silence accuracy − chance) ≤ 0.1",
                        "value": round(d, 6), "met": d <= 0.1 + 1e-9})
        if r.get("shuffle_accuracy") is not None and r.get("accuracy") is not None:
            d = abs(r["shuffle_accuracy"] - r["accuracy"])
            out.append({"check": f"shuffle:{n}", "expected": "abs(shuffled accuracy − accuracy) ≤ 0.1",
                        "value": round(d, 6), "met": d <= 0.1 + 1e-9})
    return out


def _weights(w: dict[str, float] | None) -> str:
    return "/".join(f"{w.get(k, 0):g}" for k in REWARD_COMPONENTS) if w else "–"


def markdown(results: list[dict[str, Any]], runs: dict[str, dict[str, Any]], overrides: list[str],
             configs: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["# Reward ablations", "",
             f"Overrides on every run: `{' '.join(overrides) or '(none)'}`. Held-out = the bench split, greedy answers "
             "after GRPO, exact rule (eval.heldout_metrics); rewards = mean over GRPO steps of each step's mean.", "",
             "| run | status | weights c/p/cons/f | SFT | accuracy before → after | irrelevant_clip_rate | "
             "paraphrase_agreement | format_rate | mean length | silence (chance) | shuffled |",
             "|" + "---|" * 11]
    for r in results:
        x = runs[r["name"]]
        status = r["status"] + (f": {r['error']}" if r.get("error") else "") + (f": {r['note']}" if r.get("note") else "")
        lines.append(f"| {r['name']} | {status} | {_weights(r.get('weights'))} | "
                     f"{'shared' if r.get('shared_sft') else 'yes' if r.get('sft') else 'no'} | "
                     f"{_fmt(x['accuracy_before'])} → {_fmt(x['accuracy'])} | {_fmt(x['irrelevant_clip_rate'])} | "
                     f"{_fmt(x['paraphrase_agreement'])} | {_fmt(x['format_rate'])} | {_fmt(x['mean_length'])} | "
                     f"{_fmt(x['silence_accuracy'])} ({_fmt(x['chance'])}) | {_fmt(x['shuffle_accuracy'])} |")
    configs = configs if configs is not None else runs
    lines += _means_table(configs)
    t6 = table6(configs)
    lines += ["", "## Table 6 shape (held-out accuracy)", "", "| method | accuracy |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in t6.items()]
    lines += ["", "## Expected directions (issue 26)", "",
              "| check | expected | difference ± standard error | met | decided (≥ 2 standard errors from the margin) |",
              "|---|---|---|---|---|"]
    lines += [_check_line(c) for c in checks(configs)]
    comps = [*REWARD_COMPONENTS, "total"]
    lines += ["", "## Mean reward per component (GRPO steps)", "",
              "| run | " + " | ".join(comps) + " |", "|" + "---|" * (1 + len(comps))]
    for r in results:
        m = r.get("reward_means") or {}
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(m.get(c)) for c in comps) + " |")
    return "\n".join(lines) + "\n"


def _check_line(c: dict[str, Any]) -> str:
    yn = lambda v: "–" if v is None else "yes" if v else "NO"  # noqa: E731
    diff = _fmt(c["value"]) + ("" if c.get("se") is None else f" ± {c['se']:.3f}")
    return f"| {c['check']} | {c['expected']} | {diff} | {yn(c['met'])} | {yn(c.get('decided'))} |"


def _means_table(configs: dict[str, dict[str, Any]]) -> list[str]:
    """The per-configuration means (mean ± standard deviation over its runs), when a configuration ran repeatedly."""
    if not any(r.get("n") for r in configs.values()):
        return []
    pm = lambda r, k: _fmt(r.get(k)) + (f" ± {r[k + '_std']:.3f}" if r.get(k + "_std") is not None else "")  # noqa: E731
    lines = ["", "## Means over repeated runs (other sampling seeds, same SFT checkpoint)", "",
             "| configuration | runs | accuracy | irrelevant_clip_rate | paraphrase_agreement | paraphrase_kappa | "
             "format_rate |", "|" + "---|" * 7]
    for name, r in configs.items():
        lines.append(f"| {name} | {r.get('n') or 1} | {pm(r, 'accuracy')} | {pm(r, 'irrelevant_clip_rate')} | "
                     f"{pm(r, 'paraphrase_agreement')} | {pm(r, 'paraphrase_kappa')} | {pm(r, 'format_rate')} |")
    return lines + ["", "Table 6 and the checks below read these means."]


def plot(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """Left: the held-out metrics (bars per run, mean length scaled to its maximum; with repeated runs the means with
    one standard error); right: Table 6's three rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n, r in runs.items() if r.get("status") == "ok"]
    keys = ["accuracy", "irrelevant_clip_rate", "paraphrase_agreement", "format_rate", "mean_length"]
    top_len = max([runs[n]["mean_length"] or 0 for n in names] + [1e-9])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        scale = [top_len if k == "mean_length" else 1 for k in keys]
        vals = [(runs[n][k] or 0) / s for k, s in zip(keys, scale)]
        err = [(_se(runs[n], k) or 0) / s for k, s in zip(keys, scale)]  # one standard error of a mean of repeats
        a.bar_label(a.bar(np.arange(len(keys)) + i * width, vals, width, label=n, yerr=err if any(err) else None,
                          capsize=2), fmt="%.2f", fontsize=6)
    a.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    a.set_xticklabels([*keys[:-1], "mean length (÷ max)"], fontsize=8)
    a.set_ylim(0, 1.1)
    a.set_title("held-out, after GRPO")
    a.grid(axis="y", alpha=0.3)
    if names:
        a.legend(fontsize=7)
    t6 = table6(runs)
    b.bar_label(b.bar(list(t6), [v if v is not None else math.nan for v in t6.values()],
                      color=["#999", "#3a7", "#a73"]), fmt="%.2f", fontsize=8)
    b.set_ylim(0, 1.05)
    b.set_title("Table 6 shape: held-out accuracy")
    b.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, paths: list[str], results: list[dict[str, Any]], overrides: list[str]) -> None:
    order = {Path(p).stem: i for i, p in enumerate(paths)}  # configurations in the given order, repeats in theirs
    results.sort(key=lambda r: (order.get(r.get("config_name", r["name"]), 0), r.get("repeat", 0)))
    runs = {r["name"]: run_row(r) for r in results}
    configs = config_rows(results, runs)
    doc = {"overrides": overrides, "runs": runs, "configs": configs, "table6": table6(configs),
           "checks": checks(configs), "ablations": results}
    (out / "ablations.json").write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(results, runs, overrides, configs)
    (out / "ablations.md").write_text(md)
    plot(configs, out / "ablations.png")
    done = {r["name"]: r["run_dir"] for r in results
            if r.get("status") == "ok" and r.get("run_dir") and Path(r["run_dir"]).is_dir()}
    if done:  # one listening page: each run's held-out answers side by side, links to each run's own page
        write_runs_page(out / "ablations.html", "Reward ablations", done,
                        intro='<p><a href="ablations.md">ablations.md</a></p>')
    print(md)
    print(f"[ablate] wrote {out / 'ablations.md'}, {out / 'ablations.json'}, {out / 'ablations.png'}"
          + (f", {out / 'ablations.html'}" if done else ""), flush=True)
