"""The verdict on a chaos trial: every process exited 0, the final adapter equals the reference's (max abs diff <=
``TOL``), the reference's sample ids trained once each, one metrics row per step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .watch import _grpo_rows

TOL = 1e-4


def adapter(run_dir: Path, step: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = run_dir / "grpo" / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"
    return load_file(str(path)) if path.is_file() else {}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a or not b or a.keys() != b.keys():
        return None
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def judge(setup: Any, ref: dict[str, Any], run_dir: Path, segs: list[Any], sums: list[dict[str, Any]]
          ) -> dict[str, Any]:
    """The trial's checks against the reference: exit codes, final adapter, trained ids, one row per step."""
    from collections import Counter

    diff = max_abs_diff(ref["adapter"], adapter(run_dir, setup.steps))
    ids = [i for s in sums for i in s.get("trained_ids", [])]
    ids_ok = Counter(ids) == Counter(ref["ids"]) and len(ids) == len(set(ids))
    rows = [int(r["step"]) for r in _grpo_rows(run_dir / "metrics.jsonl") if r.get("phase") == "grpo"]
    rows_ok = rows == list(range(1, setup.steps + 1))
    rcs = [s.rc for s in segs]
    rec = {k: sum(int(s.get(k, 0) or 0) for s in sums)
           for k in ("learner_restarts", "rollout_resends", "reward_actor_replacements")}
    rec["resumes"] = len(segs) - 1
    ok = all(rc == 0 for rc in rcs) and diff is not None and diff <= TOL and ids_ok and rows_ok
    errors = [s.error for s in segs if s.error]
    if not ok and not errors:
        errors = [("adapter differs" if diff is None or diff > TOL else "")
                  + ("; trained ids differ" if not ids_ok else "") + ("; metrics rows " + str(rows) if not rows_ok
                                                                       else "")]
    return {"ok": ok, "rcs": rcs, "max_abs_diff": diff, "ids_ok": ids_ok, "n_ids": len(ids), "rows": rows,
            "rows_ok": rows_ok, "recoveries": sum(rec.values()), "recovery_counts": rec,
            "leftover_processes": sum(s.leftovers for s in segs), "errors": errors,
            "wall_s": sum(s.wall_s for s in segs)}
