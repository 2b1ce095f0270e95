"""Rollout scaling across actors and nodes: one rollout actor on one node vs two actors on two (simulated) nodes.

    python benchmarks/rollout_scaling.py [--prompts 8 --group-size 8 --max-new-tokens 32 --repeats 3]

A `ray.cluster_utils.Cluster` with two nodes of one CPU each (two raylets on this machine); the RolloutPool places
one actor per node (STRICT_SPREAD; one torch thread each) and splits every batch between them (a group is
never split). The same prompts, G and completion length (``ignore_eos``) in both setups. Prints samples/s for each,
the ratio and its fraction of linear (2×); writes JSON + PNG to ``--out``. A shared 2-core machine: rough.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(cluster_address: str, actors: int, prompts, g: int, repeats: int, model_path: str, max_new: int) -> dict:
    import ray

    from actors.rollout import RolloutPool
    from polyaudio_rl.core.config import load_config

    cfg = load_config(overrides=[
        f"model.path={model_path}", f"rollout.num_actors={actors}", "rollout.placement_strategy=STRICT_SPREAD",
        f"rollout.max_new_tokens={max_new}", "rollout.cpus_per_actor=1", "data.max_clips=5",
        f"rollout.max_num_seqs={max(64, len(prompts) * g)}",
    ])
    ray.init(address=cluster_address, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT)}})
    pool = RolloutPool(cfg, model_path=model_path)
    try:
        nodes = {info["node_id"] for info in pool.stats()}
        pool.generate(prompts, [f"warm-{i}" for i in range(len(prompts))], g, ignore_eos=True)
        best = float("inf")
        for r in range(repeats):
            t0 = time.perf_counter()
            groups = pool.generate(prompts, [f"r{r}-{i}" for i in range(len(prompts))], g, ignore_eos=True)
            best = min(best, time.perf_counter() - t0)
        n = sum(len(gr.completions) for gr in groups)
        return {"actors": actors, "nodes": len(nodes), "seconds": best, "samples_per_s": n / best, "samples": n}
    finally:
        pool.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "rollout_scaling"))
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    from benchmarks.rollout_throughput import _prompts
    from polyaudio_rl.core.model import load_processor
    from polyaudio_rl.core.tiny import ensure_tiny

    model_path = str(ensure_tiny(ROOT / "artifacts" / "tiny-qwen2-audio"))
    prompts = _prompts(load_processor(model_path), a.prompts, a.clips)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for actors in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        if actors == 2:
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            res[f"actors{actors}"] = measure(cluster.address, actors, prompts, a.group_size, a.repeats, model_path,
                                             a.max_new_tokens)
        finally:
            cluster.shutdown()
        r = res[f"actors{actors}"]
        print(f"  {actors} actor(s) on {r['nodes']} node(s): {r['samples_per_s']:.1f} samples/s", flush=True)
    res["scaling"] = res["actors2"]["samples_per_s"] / res["actors1"]["samples_per_s"]
    res["of_linear"] = res["scaling"] / 2
    (out / "rollout_scaling.json").write_text(json.dumps(res, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(["1 actor / 1 node", "2 actors / 2 nodes"], [res["actors1"]["samples_per_s"], res["actors2"]["samples_per_s"]],
           color=["#999", "#3a7"])
    ax.set_ylabel("samples / s")
    ax.set_title(f"{res['scaling']:.2f}× ({res['of_linear']:.0%} of linear)")
    fig.tight_layout()
    fig.savefig(out / "rollout_scaling.png", dpi=120)
    print(f"scaling {res['scaling']:.2f}× ({res['of_linear']:.0%} of linear); wrote {out / 'rollout_scaling.json'}")


if __name__ == "__main__":
    main()
