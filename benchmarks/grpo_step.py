"""GRPO steps, end to end, with the vLLM and the Hugging Face rollout engine, synchronous and pipelined:
samples/s and phase breakdown.

    python benchmarks/grpo_step.py [--config configs/tiny_cpu.yaml] [--steps 6] [--warmup 2]
                                   [--runs vllm:1,vllm:0,hf:1,hf:0] [--out artifacts/bench] [key=value ...]

A run is ``ENGINE:LAG`` (``rollout.engine``, ``grpo.max_policy_lag``). ``hf:0`` is the loop every RL library
starts from — Hugging Face ``generate``, then score, then train, then sync, one after another; ``vllm:1`` is this
system as shipped (configs/demo.yaml and the production config run at lag 1): vLLM rollouts of step b+1 overlap
step b's training. The headline ratio is ``vllm:1`` over ``hf:0``; ``vllm:0`` over ``hf:0`` is the engine alone,
``hf:1`` the pipeline alone.

Each engine runs the real driver step (:meth:`polyaudio_rl.driver.GRPODriver.step`: Ray Data prompts → rollout actor →
reward actor → DeepSpeed learner workers → verified weight sync) on the config's checkpoint (the tiny one by default),
from a fresh learner, with the same seeded prompt order, the same G and prompts per step, and the same completion
length: every completion is exactly ``rollout.max_new_tokens`` long (``ignore_eos``), so both engines generate, score
and train on the same number of tokens. ``--warmup`` steps are run first and not timed (first multimodal batch,
allocator warm-up). Engines run one after another on one local Ray cluster; each is shut down before the next.

Prints per run the mean seconds per step of each phase (data, generate, reward, train, sync; at lag 1 generate
overlaps train) and samples/s (completions / step wall time), then the ratios of samples/s and of generate time. Writes
``OUT/grpo_step.json`` and ``OUT/grpo_step.png``; Ray's and the libraries' log lines go to ``OUT/logs/``.
Timings on a shared machine vary: the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("data", "generate", "reward", "train", "sync")


class FixedLength:
    """The rollout pool, with every completion generated to exactly max_new_tokens (equal work for every engine)."""

    def __init__(self, pool):
        self.pool = pool

    def submit(self, prompts, group_ids=None, n=None, **kw):  # what the driver's producer calls
        return self.pool.submit(prompts, group_ids, n, ignore_eos=True, **kw)

    def generate(self, prompts, group_ids=None, n=None, **kw):
        return self.pool.generate(prompts, group_ids, n, ignore_eos=True, **kw)

    def __getattr__(self, name):
        return getattr(self.pool, name)


def ensure_pref(cfg, out: Path) -> str:
    """A ``ci``-preset pref split of the config's tasks, built once under ``out`` (never touches the demo data)."""
    from datagen.build import build_split
    from polyaudio_rl.core.schema import shard_paths

    d = out / "grpo_step_data" / "pref"
    if not shard_paths(str(d)):
        print(f"building the pref split for the benchmark in {d}", flush=True)
        extra = {"tasks": list(cfg.data.tasks)} if cfg.data.tasks else {}
        build_split("pref", str(d), preset="ci", seed=cfg.seed, workers=2, progress=True,
                    min_clips=cfg.data.min_clips, max_clips=cfg.data.max_clips, **extra)
    return str(d)


def bench_engine(cfg, engine: str, lag: int, warmup: int, steps: int) -> dict:
    from dataclasses import replace

    from actors.learner import Learner
    from actors.rollout import RolloutPool
    from polyaudio_rl.data_stream import PromptStream
    from polyaudio_rl.driver import GRPODriver
    from polyaudio_rl.core.model import load_processor, resolve_path
    from rewards.actor import RewardPool

    # no checkpoint barrier inside the timed steps (a checkpoint step's sync is synchronous at any lag)
    cfg = replace(cfg, rollout=replace(cfg.rollout, engine=engine),
                  grpo=replace(cfg.grpo, max_policy_lag=lag, steps=max(cfg.grpo.steps, warmup + steps + 1)),
                  learner=replace(cfg.learner, checkpoint_every=0))
    path = resolve_path(cfg.model)
    parts = []
    try:
        t0 = time.perf_counter()
        learner = Learner(cfg, stage="grpo")
        parts.append(learner)
        t1 = time.perf_counter()
        pool = RolloutPool(cfg, model_path=path)
        parts.append(pool)
        t2 = time.perf_counter()
        rewards = RewardPool(cfg.reward, answer_tag=cfg.data.answer_tag)
        parts.append(rewards)
        stream = PromptStream(cfg.data.pref_dir, path, cfg.data, seed=cfg.seed)
        parts.append(stream)
        driver = GRPODriver(cfg, stream, FixedLength(pool), rewards, learner, load_processor(path))
        parts.append(driver)  # closed first: stops its producer thread (lag >= 1)
        driver.sync()
        rows = []
        for step in range(1, warmup + steps + 1):
            m = driver.step(step).metrics
            rows.append({"step": step, "warmup": step <= warmup, "samples": round(m["samples_per_s"] * m["time/step"]),
                         "response_length": m["response_length"], "step_s": m["time/step"],
                         "prompts_cached": m.get("learner/prompts_cached", 0.0),
                         "prompts_encoded": m.get("learner/prompts_encoded", 0.0), "prep_s": m.get("learner/prep_s_max"),
                         **{p: m[f"time/{p}"] for p in PHASES}})
            print(f"  {engine}:{lag} step {step}{' (warm-up)' if step <= warmup else ''}: {m['time/step']:.2f} s, "
                  + ", ".join(f"{p} {m[f'time/{p}']:.2f}" for p in PHASES)
                  + f" (prompts ready/built {rows[-1]['prompts_cached']:.0f}/{rows[-1]['prompts_encoded']:.0f}, "
                  f"slowest worker's inputs {rows[-1]['prep_s'] or 0:.2f} s)", flush=True)
    finally:
        for p in reversed(parts):
            try:
                (p.close if hasattr(p, "close") else p.shutdown)()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"shutdown: {exc}", file=sys.stderr)
    timed = [r for r in rows if not r["warmup"]]
    total_s = sum(r["step_s"] for r in timed)
    return {"learner_start_s": t1 - t0, "engine_start_s": t2 - t1, "steps": rows,
            "samples_per_s": sum(r["samples"] for r in timed) / total_s,
            "step_s": total_s / len(timed), "response_length": statistics.mean(r["response_length"] for r in timed),
            "phases_s": {p: statistics.mean(r[p] for r in timed) for p in PHASES}}


def report(res: dict) -> None:
    s = res["setup"]
    print(f"\nGRPO step: {s['prompts_per_step']} prompts × G={s['group_size']} × {s['max_new_tokens']} tokens "
          f"(fixed length), up to {s['max_clips']} clips, {s['learner_workers']} learner workers; mean of "
          f"{s['steps']} steps after {s['warmup']} warm-up; {s['cpus']} CPUs, load average "
          f"{s['load_avg_start']:.1f} -> {s['load_avg_end']:.1f}")
    print(f"{'run':8s} {'samples/s':>10s} {'step s':>8s} " + " ".join(f"{p:>9s}" for p in PHASES)
          + f" {'start s':>8s}")
    for name, e in res["engines"].items():
        print(f"{name:8s} {e['samples_per_s']:10.2f} {e['step_s']:8.2f} "
              + " ".join(f"{e['phases_s'][p]:9.2f}" for p in PHASES) + f" {e['engine_start_s']:8.1f}")
    for name, r in res.get("ratios", {}).items():
        print(f"{name:>14s}: samples/s {r['samples_per_s']:.2f}x;  generate time {r['generate_time']:.3f}")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["engines"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    left = [0.0] * len(names)
    for p in PHASES:
        vals = [res["engines"][n]["phases_s"][p] for n in names]
        a.barh(names, vals, left=left, label=p)
        left = [l + v for l, v in zip(left, vals)]
    a.scatter([res["engines"][n]["step_s"] for n in names], names, marker="|", s=900, color="k", zorder=3,
              label="step wall time")  # at lag 1 generate overlaps train: the wall time is less than the stack
    a.set_xlabel("seconds per GRPO step (mean; phases stacked)")
    a.legend(fontsize=8, ncol=len(PHASES) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    s = res["setup"]
    a.set_title(f"{s['prompts_per_step']} prompts × G={s['group_size']} × {s['max_new_tokens']} tok, phases")
    b.bar_label(b.bar(names, [res["engines"][n]["samples_per_s"] for n in names], color="tab:green"), fmt="%.2f")
    b.set_ylabel("samples / s (higher is better)")
    b.set_title("GRPO step throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("--steps", type=int, default=6, help="timed GRPO steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed GRPO steps first, per run (lag 1 fills its pipeline)")
    ap.add_argument("--runs", default="vllm:1,vllm:0,hf:1,hf:0", help="comma list of ENGINE:LAG")
    ap.add_argument("--out", default="artifacts/bench", help="directory for grpo_step.{json,png} (and its data)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. grpo.group_size=8")
    a = ap.parse_args(argv)

    import ray

    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.console import Console
    from polyaudio_rl.core.cluster import check_resources, connect_ray

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config, ["wandb_mode=disabled", *a.overrides])
    if not any(o.startswith("data.pref_dir=") for o in a.overrides):
        cfg.data.pref_dir = ensure_pref(cfg, out)
    g, r, lc = cfg.grpo, cfg.rollout, cfg.learner
    res: dict = {"setup": {"prompts_per_step": g.prompts_per_step, "group_size": g.group_size,
                           "max_new_tokens": r.max_new_tokens, "max_clips": cfg.data.max_clips,
                           "enforce_eager": r.enforce_eager, "learner_workers": lc.num_workers,
                           "zero_stage": lc.zero_stage, "steps": a.steps, "warmup": a.warmup, "model": cfg.model.path,
                           "pref_dir": cfg.data.pref_dir, "overrides": a.overrides, "cpus": os.cpu_count(),
                           "load_avg_start": os.getloadavg()[0]}, "engines": {}}
    # Everything is reported and written while Ray is still up: a Ray Data thread that outlives ray.shutdown()
    # can make Ray end the process.
    try:
        # library chatter (Ray Data progress, workers' output) goes to OUT/logs/, the console keeps the figures
        con = Console(out, quiet=True).install()
        check_resources(cfg, connect_ray(cfg, con))
        for run in filter(None, a.runs.split(",")):
            engine, _, lag = run.partition(":")
            print(f"== rollout.engine={engine} grpo.max_policy_lag={int(lag or 0)}", flush=True)
            res["engines"][f"{engine}:{int(lag or 0)}"] = bench_engine(cfg, engine, int(lag or 0), a.warmup, a.steps)
        res["setup"]["load_avg_end"] = os.getloadavg()[0]
        e = res["engines"]
        res["ratios"] = {}
        for name, (x, y) in {"vllm:1 / hf:0": ("vllm:1", "hf:0"), "vllm:0 / hf:0": ("vllm:0", "hf:0"),
                             "vllm:1 / hf:1": ("vllm:1", "hf:1")}.items():
            if x in e and y in e:
                res["ratios"][name] = {
                    "samples_per_s": e[x]["samples_per_s"] / e[y]["samples_per_s"],
                    "generate_time": e[x]["phases_s"]["generate"] / e[y]["phases_s"]["generate"]}
        report(res)
        (out / "grpo_step.json").write_text(json.dumps(res, indent=1))
        plot(res, out / "grpo_step.png")
        print(f"wrote {out / 'grpo_step.json'} and {out / 'grpo_step.png'}", flush=True)
    finally:
        ray.shutdown()
    return res


if __name__ == "__main__":
    main()
