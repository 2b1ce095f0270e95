"""Rollout throughput (vLLM vs transformers generate) and weight-sync latency (merged vs adapter).

    python benchmarks/rollout_throughput.py [--prompts 4 --group-size 8 --max-new-tokens 32 --clips 3]

Same prompts, G, and completion length for every engine (``ignore_eos``: every completion is exactly
``max_new_tokens`` long), on the checkpoint of ``--config`` (default: the tiny one). Engines run in this process one
after another (each is closed before the next starts). Prints a table and writes JSON + PNG to ``--out``.

Figures: samples/s and tokens/s per engine (vLLM merged-sync engine, vLLM LoRA-enabled engine for adapter sync,
HF ``generate``); per sync mode, the median push time (merged: ``reload_weights`` + cache resets; adapter: write the
PEFT dir + ``add_lora``) and the probe time (the fingerprint that verifies each sync).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _prompts(processor, n_prompts: int, n_clips: int):
    from polyaudio_rl.core.prompts import prompt_from_arrays

    sr, out = 16000, []
    for i in range(n_prompts):
        audios = []
        for k in range(n_clips):
            t = np.arange(int((1.0 + 0.5 * ((i + k) % 3)) * sr)) / sr
            audios.append((0.3 * np.sin(2 * np.pi * 220.0 * (k + 1 + i) * t)).astype(np.float32))
        out.append(prompt_from_arrays(f"bench-{i}", f"Which of the {n_clips} clips has the highest pitch?", audios,
                                      processor))
    return out


def _learner(model_path: str, lora_cfg):
    from polyaudio_rl.core.config import LoraConfig
    from polyaudio_rl.core.model import add_lora, load_model

    torch.manual_seed(0)
    return add_lora(load_model(model_path), LoraConfig(rank=lora_cfg.rank, alpha=lora_cfg.alpha, dropout=0.0))


def _set_b(peft, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return peft


def bench_generate(engine, prompts, g: int, repeats: int) -> dict:
    engine.generate(prompts, g, ignore_eos=True)  # warm-up (first multimodal batch, compilation)
    times, toks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        groups = engine.generate(prompts, g, ignore_eos=True)
        times.append(time.perf_counter() - t0)
        toks.append(sum(gr.num_tokens for gr in groups))
    best = min(range(repeats), key=lambda i: times[i])
    n_samples = len(prompts) * g
    return {"seconds": times[best], "samples_per_s": n_samples / times[best], "tokens_per_s": toks[best] / times[best],
            "samples": n_samples, "tokens": toks[best]}


def bench_sync(engine, mode: str, peft, processor, probe, versions: int, tol: float) -> dict:
    from actors.weight_sync import WeightSyncer, reference_logprobs
    from polyaudio_rl.core.models import family_of_model
    from polyaudio_rl.core.weights import lora_tensors, merged_lora_weights

    syncer = WeightSyncer(engine, probe, mode, tol)
    push, probe_s, diffs = [], [], []
    for v in range(1, versions + 1):
        _set_b(peft, v)
        weights = merged_lora_weights(peft) if mode == "merged" else lora_tensors(peft.named_parameters(), family_of_model(peft))
        expected = reference_logprobs(peft, processor, probe)
        res = syncer.sync(weights, v, expected)
        push.append(res.push_s)
        probe_s.append(res.probe_s)
        diffs.append(res.max_abs_diff)
    n_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    return {"push_s_median": statistics.median(push), "probe_s_median": statistics.median(probe_s),
            "push_s": push, "max_abs_diff": max(diffs), "tensors": len(weights), "megabytes": n_bytes / 2**20}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per vLLM engine (best is kept: shared CPUs)")
    ap.add_argument("--hf-repeats", type=int, default=1, help="timed runs of HF generate (slow)")
    ap.add_argument("--sync-versions", type=int, default=5)
    ap.add_argument("--eager", action="store_true", help="vLLM enforce_eager (faster start, slower generate)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: vllm,adapter,hf")
    ap.add_argument("--out", default="artifacts/bench", help="directory for rollout_throughput.{json,png}")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.model import load_processor, resolve_path
    from actors.rollout_engine import EngineSpec, HFEngine, VLLMEngine
    from actors.weight_sync import make_probe, sync_tolerance

    cfg = load_config(args.config, [f"rollout.max_new_tokens={args.max_new_tokens}",
                                    f"rollout.enforce_eager={str(args.eager).lower()}", "model.lora.dropout=0.0"])
    path = resolve_path(cfg.model)
    processor = load_processor(path)
    prompts = _prompts(processor, args.prompts, args.clips)
    probe = make_probe(processor, cfg.rollout.probe_tokens)
    peft = _learner(path, cfg.model.lora)
    spec = EngineSpec.from_config(cfg)
    skip = set(filter(None, args.skip.split(",")))
    res: dict = {"setup": {"prompts": args.prompts, "G": args.group_size, "max_new_tokens": args.max_new_tokens,
                           "clips": args.clips, "model": path, "enforce_eager": args.eager,
                           "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
                           "cpus": os.cpu_count()}, "generate": {}, "sync": {}, "start_s": {}}
    parts = [p for p in ("vllm", "adapter", "hf") if p not in skip]
    for part in tqdm(parts, desc="engines"):
        t0 = time.perf_counter()
        if part == "hf":
            eng = HFEngine(path, cfg.rollout, spec)
        else:
            rc = cfg.rollout
            rc.sync_mode = "merged" if part == "vllm" else "adapter"
            eng = VLLMEngine(path, rc, spec)
        res["start_s"][part] = time.perf_counter() - t0
        name = {"vllm": "vllm (merged sync)", "adapter": "vllm LoRA engine, no adapter yet", "hf": "hf generate"}[part]
        reps = args.hf_repeats if part == "hf" else args.repeats
        res["generate"][name] = bench_generate(eng, prompts, args.group_size, reps)
        if part in ("vllm", "adapter"):
            mode = "merged" if part == "vllm" else "adapter"
            res["sync"][mode] = bench_sync(eng, mode, peft, processor, probe, args.sync_versions,
                                           sync_tolerance(cfg))
            synced = "vllm (merged sync)" if part == "vllm" else "vllm + LoRA (adapter sync)"
            res["generate"][synced + ", after sync"] = bench_generate(eng, prompts, args.group_size, args.repeats)
        eng.close()
        del eng
        gc.collect()

    gen = res["generate"]
    print(f"\nRollout throughput: {args.prompts} prompts × G={args.group_size} × {args.max_new_tokens} tokens, "
          f"{args.clips} clips each ({path}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"at the end, {res['setup']['load_avg_1m']:.1f} at the start)")
    print(f"{'engine':42s} {'samples/s':>10s} {'tokens/s':>10s} {'seconds':>8s}")
    for k, v in gen.items():
        print(f"{k:42s} {v['samples_per_s']:10.1f} {v['tokens_per_s']:10.1f} {v['seconds']:8.2f}")
    if "vllm (merged sync)" in gen and "hf generate" in gen:
        res["vllm_over_hf"] = gen["vllm (merged sync)"]["samples_per_s"] / gen["hf generate"]["samples_per_s"]
        print(f"vLLM / HF samples/s: {res['vllm_over_hf']:.1f}x")
    print(f"\nWeight sync ({args.sync_versions} versions, median):")
    for k, v in res["sync"].items():
        print(f"  {k:8s} push {v['push_s_median'] * 1e3:8.1f} ms  probe {v['probe_s_median'] * 1e3:7.1f} ms  "
              f"{v['tensors']} tensors, {v['megabytes']:.2f} MiB, max |Δ log-prob| vs learner {v['max_abs_diff']:.1e}")
    print("engine start (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["start_s"].items()))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_throughput.json").write_text(json.dumps(res, indent=2))
    _plot(res, out / "rollout_throughput.png")
    print(f"wrote {out / 'rollout_throughput.json'} and {out / 'rollout_throughput.png'}")
    return res


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(res["generate"])
    a.barh(names, [res["generate"][n]["samples_per_s"] for n in names], color="tab:blue")
    a.set_xlabel("samples / s (higher is better)")
    s = res["setup"]
    a.set_title(f"{s['prompts']} prompts × G={s['G']} × {s['max_new_tokens']} tok, {s['clips']} clips")
    modes = list(res["sync"])
    push = [res["sync"][m]["push_s_median"] * 1e3 for m in modes]
    probe = [res["sync"][m]["probe_s_median"] * 1e3 for m in modes]
    b.bar(modes, push, label="push")
    b.bar(modes, probe, bottom=push, label="probe (verification)")
    b.set_ylabel("ms per sync (median)")
    b.set_title("weight sync latency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
