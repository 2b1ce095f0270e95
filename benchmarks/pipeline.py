"""Synchronous vs pipelined GRPO (grpo.max_policy_lag 0 vs 1) on the embedded default, rollouts and learner pinned
to disjoint CPU cores (as they would sit on disjoint GPUs).

    python benchmarks/pipeline.py [--steps 12] [--out artifacts/bench/pipeline] [--seed 0]

Each run is `python -m polyaudio_rl.train --skip-sft` (configs/tiny_cpu.yaml) on a small starter pref split, so
the stream crosses at least one epoch boundary. Figures, from every step's metrics (RUN_DIR/metrics.jsonl), over the
wall time from the first step's start to the last step's end:

    samples/s          completions trained per second
    speedup            lag 1 / lag 0;  ideal = (generate + train) / max(generate, train) from the lag-0 run's phases
    busy fractions     rollout actors, reward actors, learner (union of their timeline spans / wall)
    data_wait_frac     time the producer waited for the prompt stream / wall
    sync_critical_frac time the trainer thread spent in weight sync / wall (``_steady``: without the last step, a
                       checkpoint barrier whose sync is synchronous at any lag)

Writes DIR/pipeline.json and DIR/pipeline.png; prints a table. Measured on a shared 2-core machine: rough.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_data(out: Path, seed: int) -> Path:
    from datagen.build import build_split

    pref = out / "data" / "pref"
    if not any(pref.glob("*.parquet")):
        build_split("pref", str(pref), preset="starter", seed=seed, workers=2, progress=False,
                    items_per_task={"pref": 6})  # 3 starter tasks × 6 = 18 rows: an epoch every ~4 steps
    return pref


def run(tag: str, lag: int, steps: int, pref: Path, out: Path, seed: int, cores: tuple[int, int]) -> Path:
    run_dir = out / tag
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "polyaudio_rl.train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--quiet",
           "--skip-sft", "--run-dir", str(run_dir),
           f"seed={seed}", f"grpo.steps={steps}", f"grpo.max_policy_lag={lag}", f"data.pref_dir={pref}",
           "eval.max_items=0", "learner.num_workers=1", "learner.checkpoint_every=0", "wandb_mode=disabled",
           f"rollout.cpu_affinity=[{cores[0]}]", f"learner.cpu_affinity=[{cores[1]}]"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_ENABLE_V1_MULTIPROCESSING="0", RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    with open(out / f"{tag}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{tag}: the run failed (rc {rc}); see {out / f'{tag}.log'}")
    print(f"  {tag}: {steps} steps in {time.time() - t0:.0f} s (incl. start-up)", flush=True)
    return run_dir


def figures(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    g = [r for r in rows if r.get("phase") == "grpo"]
    wall = sum(r["time/step"] for r in g)
    samples = sum(r["samples_per_s"] * r["time/step"] for r in g)

    def total(key: str) -> float:
        return sum(r.get(key, 0.0) for r in g)

    def mean(key: str) -> float:
        return total(key) / len(g)

    return {
        "steps": len(g), "wall_s": wall, "samples_per_s": samples / wall,
        "generate_s": mean("time/generate"), "train_s": mean("time/train"), "reward_s": mean("time/reward"),
        "data_wait_frac": total("time/data") / wall, "sync_critical_frac": total("time/sync") / wall,
        # the same without the last step: a checkpoint barrier, whose sync is synchronous at any lag
        "sync_critical_frac_steady": sum(r["time/sync"] for r in g[:-1]) / max(sum(r["time/step"] for r in g[:-1]), 1e-9),
        "busy_rollout": sum(r["busy/rollout"] * r["time/step"] for r in g) / wall,
        "busy_reward": sum(r["busy/reward"] * r["time/step"] for r in g) / wall,
        "busy_learner": sum(r["busy/learner"] * r["time/step"] for r in g) / wall,
        "policy_lag_max": max(r.get("policy_lag/max", 0.0) for r in g),
        "data_positions": max(r["data/position"] for r in g),
    }


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    tags = ["lag0", "lag1"]
    ax[0].bar(tags, [res[t]["samples_per_s"] for t in tags], color=["#999", "#3a7"])
    ax[0].set_ylabel("samples / s")
    ax[0].set_title(f"speedup {res['speedup']:.2f}× (ideal {res['ideal_speedup']:.2f}×)")
    width = 0.25
    for i, pool in enumerate(("busy_rollout", "busy_reward", "busy_learner")):
        ax[1].bar([j + (i - 1) * width for j in range(2)], [res[t][pool] for t in tags], width, label=pool[5:])
    ax[1].set_xticks(range(2), tags)
    ax[1].set_ylim(0, 1)
    ax[1].set_ylabel("busy fraction")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "pipeline"))
    ap.add_argument("--cores", default="0,1", help="rollout core, learner core")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate lag 0 / lag 1 this many times and average (a shared machine's load drifts)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = tuple(int(c) for c in a.cores.split(","))
    pref = build_data(out, a.seed)
    res: dict = {"rounds": []}
    for r in range(a.rounds):
        res["rounds"].append({tag: figures(run(f"{tag}-r{r}", lag, a.steps, pref, out, a.seed, cores))
                              for tag, lag in (("lag0", 0), ("lag1", 1))})
    for tag in ("lag0", "lag1"):
        runs = [rd[tag] for rd in res["rounds"]]
        res[tag] = {k: sum(x[k] for x in runs) / len(runs) for k in runs[0]}
    res["speedup_per_round"] = [rd["lag1"]["samples_per_s"] / rd["lag0"]["samples_per_s"] for rd in res["rounds"]]
    l0, l1 = res["lag0"], res["lag1"]
    res["samples_per_s"] = {"lag0": l0["samples_per_s"], "lag1": l1["samples_per_s"]}
    res["speedup"] = l1["samples_per_s"] / l0["samples_per_s"]
    res["ideal_speedup"] = (l0["generate_s"] + l0["train_s"]) / max(l0["generate_s"], l0["train_s"])
    res["of_ideal"] = res["speedup"] / res["ideal_speedup"]
    res["data_wait_frac"] = {"lag0": l0["data_wait_frac"], "lag1": l1["data_wait_frac"]}
    res["sync_critical_frac"] = {"lag0": l0["sync_critical_frac"], "lag1": l1["sync_critical_frac"]}
    res["sync_critical_frac_steady"] = {"lag0": l0["sync_critical_frac_steady"], "lag1": l1["sync_critical_frac_steady"]}
    (out / "pipeline.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "pipeline.png")
    print(f"{'':22}{'lag 0':>10}{'lag 1':>10}")
    for k in ("samples_per_s", "generate_s", "train_s", "reward_s", "busy_rollout", "busy_reward", "busy_learner",
              "data_wait_frac", "sync_critical_frac", "sync_critical_frac_steady", "policy_lag_max", "data_positions"):
        print(f"{k:22}{l0[k]:>10.3f}{l1[k]:>10.3f}")
    print(f"speedup per round: {', '.join(f'{x:.2f}×' for x in res['speedup_per_round'])}")
    print(f"speedup {res['speedup']:.2f}× (ideal {res['ideal_speedup']:.2f}×, {res['of_ideal']:.0%} of ideal); "
          f"wrote {out / 'pipeline.json'} and {out / 'pipeline.png'}")


if __name__ == "__main__":
    main()
