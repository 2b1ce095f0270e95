"""Per-step metrics: ``RUN_DIR/metrics.jsonl`` (one JSON object per step), wandb (offline by default), PNG curves.

Keys written by the training driver are documented in the README ("Metrics").
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item") and callable(v.item):
        try:
            return _clean(v.item())
        except (ValueError, RuntimeError):
            return v
    return v


class MetricsLogger:
    """Append-only JSONL plus optional wandb. Safe to reopen on resume (appends; :meth:`rewind` drops redone steps)."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None, wandb_mode: str = "offline",
                 project: str = "polyaudio-rl"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._fh = self.path.open("a")
        self._wandb = None
        if wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self._wandb = wandb.init(project=project, dir=str(self.run_dir), mode=wandb_mode, config=config or {},
                                         name=self.run_dir.name, resume="allow", id=self.run_dir.name.replace("/", "_"))
            except Exception as exc:  # wandb is optional: never kill a run for it, but say so
                print(f"[metrics] wandb disabled: {exc}")
                self._wandb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=int(step))

    def rewind(self, step: int) -> int:
        """Drop the JSONL rows of steps after ``step`` (work lost with a dead learner or a stopped run that will be
        redone from the checkpoint at ``step``), so every step has one row. Returns how many rows were dropped."""
        self._fh.close()
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)
        self._fh = self.path.open("a")
        return len(lines) - len(keep)

    def close(self) -> None:
        self._fh.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl in step order; on resume the last record per (phase, step) wins."""
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    with Path(path).open() as fh:
        for line in fh:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_key[(str(rec.get("phase", "")), rec["step"])] = rec
    return sorted(by_key.values(), key=lambda r: (r["step"], str(r.get("phase", ""))))


def plot_curves(path: str | Path, out_png: str | Path, keys: tuple[str, ...] = ("reward/total", "reward/correctness", "kl"),
                title: str = "GRPO") -> Path:
    """Plot the given keys over steps (one panel each) into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in read_metrics(path) if r.get("phase", "grpo") == "grpo"]
    keys = tuple(k for k in keys if any(r.get(k) is not None for r in recs))
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
