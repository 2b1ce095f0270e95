"""Judge–human agreement (paper Table 3): Spearman's ρ and Kendall's τ between human and judge scores.

    python -m eval.agreement --human human.csv --results BENCH_OUT/results.jsonl [--out DIR]

``human.csv`` has a header with ``id`` and ``human_score`` (or ``score``) columns; several rows for one id (several
annotators) are averaged. Judge scores are the ``judge_score`` of ``eval.bench``'s ``results.jsonl`` (mean over the
paraphrased prompts), or a CSV with ``id`` and ``judge_score``. Items with only one of the two scores are counted
and left out. ρ is Spearman's rank correlation, τ is Kendall's τ-b (ties handled), both from scipy, with p-values.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

HUMAN_COLUMNS = ("human_score", "score")


def _float(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {v!r} is not a number") from None
    if math.isnan(x):
        raise ValueError(f"{where}: score is NaN")
    return x


def read_scores_csv(path: str, columns: tuple[str, ...]) -> dict[str, float]:
    """id -> mean score of the first present column of ``columns``."""
    p = Path(path)
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        col = next((c for c in columns if c in header), None)
        if "id" not in header or col is None:
            raise ValueError(f"{p}: needs an 'id' column and one of {list(columns)}; header is {header}")
        acc: dict[str, list[float]] = defaultdict(list)
        for line, row in enumerate(reader, start=2):
            if not (row.get("id") or "").strip():
                raise ValueError(f"{p}:{line}: empty id")
            acc[row["id"].strip()].append(_float(row[col], f"{p}:{line} (id {row['id']})"))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def read_judge_scores(path: str) -> dict[str, float]:
    """Judge scores from an ``eval.bench`` results.jsonl (scored items only) or a CSV with ``judge_score``."""
    p = Path(path)
    if p.suffix == ".csv":
        return read_scores_csv(path, ("judge_score",))
    from .bench import read_results

    return {k: float(r["judge_score"]) for k, r in read_results(p).items()
            if r.get("status") == "ok" and r.get("judge_score") is not None}


def agreement(human: dict[str, float], judge: dict[str, float]) -> dict[str, Any]:
    """Spearman ρ and Kendall τ-b over the ids scored by both."""
    from scipy.stats import kendalltau, spearmanr

    ids = sorted(set(human) & set(judge))
    out: dict[str, Any] = {"n": len(ids), "human_only": len(set(human) - set(judge)),
                           "judge_only": len(set(judge) - set(human))}
    if len(ids) < 3:
        raise ValueError(f"only {len(ids)} items have both a human and a judge score; need at least 3")
    h = [human[i] for i in ids]
    j = [judge[i] for i in ids]
    if len(set(h)) == 1 or len(set(j)) == 1:
        raise ValueError("all human scores or all judge scores are equal: rank correlation is undefined")
    rho = spearmanr(h, j)
    tau = kendalltau(h, j)
    out.update(spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue),
               kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue), ids=ids, human=h, judge=j)
    return out


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(res["human"], res["judge"], alpha=0.6)
    ax.set_xlabel("human score")
    ax.set_ylabel("judge score (mean of prompts)")
    ax.set_title(f"ρ = {res['spearman_rho']:.3f}, τ = {res['kendall_tau']:.3f} (n = {res['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Spearman's rho and Kendall's tau between human and judge scores.")
    ap.add_argument("--human", required=True, help="CSV with id and human_score (or score) columns")
    ap.add_argument("--results", required=True, help="eval.bench results.jsonl, or a CSV with id and judge_score")
    ap.add_argument("--judge-name", default="judge", help="row label (Table 3: the judge LLM)")
    ap.add_argument("--out", default=None, help="directory for agreement.json and agreement.png")
    args = ap.parse_args(argv)
    res = agreement(read_scores_csv(args.human, HUMAN_COLUMNS), read_judge_scores(args.results))
    print("| LLM | Spearman's ρ | Kendall's τ | n |\n|---|---|---|---|")
    print(f"| {args.judge_name} | {res['spearman_rho']:.3f} | {res['kendall_tau']:.3f} | {res['n']} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "agreement.json").write_text(json.dumps({k: v for k, v in res.items()}, indent=1))
        plot(res, out / "agreement.png")


if __name__ == "__main__":
    main()
