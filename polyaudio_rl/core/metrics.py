"""Per-step metrics: ``RUN_DIR/metrics.jsonl`` (one JSON object per step), wandb (offline by default), PNG curves.

Keys written by the training driver are documented in docs/metrics.md.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text


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
    """Append-only JSONL plus optional wandb, one row per (phase, step).

    ``resume_step``: this process continues a run from its checkpoint at that step (``--resume``): the rows of
    later steps, logged by the run before it stopped and about to be redone, are cut from ``metrics.jsonl`` before
    anything is appended (a negative step: nothing was checkpointed and the stage starts over, so every row goes;
    an ``eval_after`` row at the checkpoint's step goes too, as the evaluation after the last step is redone),
    and the wandb run of the same id is rewound to that step (``resume_from="<id>?_step=<step>"``; offline, the
    rewind is recorded and applied when the run is synced). :meth:`rewind` does the same mid-run, for the JSONL."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None, wandb_mode: str = "offline",
                 project: str = "polyaudio-rl", resume_step: int | None = None, filename: str = "metrics.jsonl",
                 name: str | None = None):
        """``filename``: the JSONL under ``run_dir``; ``name``: the wandb run's name and id (default: the run
        directory's name — give a stage its own, e.g. ``<run>-sft``, so two stages never share one wandb run)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        if resume_step is not None:
            cut_rows_after(self.path, resume_step, phases_at_step=("eval_after",))
        self._fh = self.path.open("a")
        self._wandb = None
        if wandb_mode != "disabled":
            self._wandb = _start_wandb(self.run_dir, project, wandb_mode, config or {}, resume_step,
                                       name or self.run_dir.name)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        if self._wandb is not None:
            try:
                self._wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=int(step))
            except Exception as exc:  # noqa: BLE001 - wandb's service died (e.g. with the job's process group)
                self._drop_wandb(exc)

    def rewind(self, step: int) -> int:
        """Drop the JSONL rows of steps after ``step`` (work lost with a dead learner or a stopped run that will be
        redone from the checkpoint at ``step``), so every step has one row. Returns how many rows were dropped."""
        self._fh.close()
        dropped = cut_rows_after(self.path, step)
        self._fh = self.path.open("a")
        return dropped

    def close(self) -> None:
        """Close the JSONL and finish the wandb run; a wandb that cannot finish (its service died with the job's
        process group: ``ConnectionResetError``) is reported, never raised: the checkpoint and the run's clean exit
        come first, and metrics.jsonl holds every row."""
        self._fh.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as exc:  # noqa: BLE001
                self._drop_wandb(exc)
            self._wandb = None

    def _drop_wandb(self, exc: BaseException) -> None:
        """Stop logging to wandb after it failed (said once on stderr); metrics.jsonl goes on."""
        import sys

        self._wandb = None
        print(f"[metrics] wandb stopped ({type(exc).__name__}: {exc}); {self.path} keeps every row "
              "(sync the offline run later with `wandb sync`)", file=sys.stderr, flush=True)


def cut_rows_after(path: str | Path, step: int, phases_at_step: tuple[str, ...] = ()) -> int:
    """Keep only the rows of ``path`` (a metrics.jsonl) whose step is at most ``step``, and of those at ``step``
    only the ones whose phase is not in ``phases_at_step`` (rows logged after that step's checkpoint, e.g.
    ``eval_after`` of a run that resumes at its last step), replacing the file atomically (a crash leaves the old
    file or the new one). A last line cut short (a process killed while writing it) goes
    too; any other line that is not a row is an error naming it. Returns how many lines were dropped; a missing
    file has none."""
    path = Path(path)
    if not path.exists():
        return 0
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    keep = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            row_step = int(row["step"])
        except (ValueError, KeyError, TypeError) as exc:
            if n == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}:{n}: not a metrics row ({exc!r}): {line[:80]!r}") from exc
        if row_step < step or (row_step == step and row.get("phase") not in phases_at_step):
            keep.append(line)
    if len(keep) != len(lines) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def _start_wandb(run_dir: Path, project: str, mode: str, config: dict[str, Any], resume_step: int | None,
                 name: str) -> Any:
    """The wandb run ``name`` (also its id) in this run directory, or None when wandb cannot start (optional: a
    run never dies for it, but says so). Resumed: rewound to ``resume_step``; where the wandb server refuses a rewind
    (the feature is in beta), the run is continued instead (``resume="allow"``)."""
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = name.replace("/", "_")
        common = {"project": project, "dir": str(run_dir), "mode": mode, "config": config, "name": name}
        if resume_step is not None:
            try:
                return wandb.init(**common, resume_from=f"{run_id}?_step={max(resume_step, 0)}")
            except Exception as exc:  # noqa: BLE001 - fall back to continuing the run without a rewind
                print(f"[metrics] wandb rewind to step {max(resume_step, 0)} refused ({exc}); continuing the run")
        return wandb.init(**common, resume="allow", id=run_id)
    except Exception as exc:  # noqa: BLE001 - wandb is optional
        print(f"[metrics] wandb disabled: {exc}")
        return None


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
                title: str = "GRPO", phase: str = "grpo") -> Path:
    """Plot the given keys of the ``phase`` rows (a row without one counts as GRPO) over steps, one panel each,
    into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in read_metrics(path) if r.get("phase", "grpo") == phase]
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
