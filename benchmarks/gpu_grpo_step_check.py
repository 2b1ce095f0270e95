"""One GRPO step with a verified weight sync on a GPU, from the run's own components, small — without Ray and vLLM.

    PYTHONPATH=. python benchmarks/gpu_grpo_step_check.py     # CUDA: bf16 + NCCL; without a GPU: fp32 + gloo

The production path is vLLM rollout actors + DeepSpeed learners (NCCL) under Ray. The lent device image has torch,
transformers and peft but no Ray or vLLM (their wheels are over what a device call may carry), so this runs what can
run there, in one process and on one GPU:

1. the learner: ``actors.learner.LearnerWorker`` (PEFT LoRA inside a DeepSpeed ZeRO-2 engine, bf16,
   ``torch.distributed`` on NCCL, world size 1) on the tiny random Qwen2-Audio written offline;
2. the rollout side: ``actors.rollout_engine.HFEngine`` on the same GPU (the reference engine; vLLM's place);
3. version 0 verified: the engine's probe log-probs against the learner's (``actors.weight_sync.WeightSyncer``);
4. G = 4 sampled completions for each of two multi-clip prompts; a synthetic reward with spread (the random tiny
   model answers nothing right: the fraction of even token ids), group advantages from ``core_algos``;
5. one GRPO step (``LearnerWorker.grpo_step``); every completion's log-prob must move with its advantage's sign on
   balance (Σ A·Δ log π > 0);
6. the sync: ``get_weights('merged')`` and ``get_weights('adapter')`` each loaded into an engine by the run's
   ``WeightSyncer.sync`` as version 1 and verified against the learner's probe log-probs (a mismatch raises); the
   pre-sync fingerprint must fail that check (the check can fail).

Prints a summary and writes $OUT/gpu_grpo_step_check.json (default /tmp). What it does not cover: vLLM on CUDA, Ray,
several learner ranks, the collective weight transport over NCCL (needs two GPUs: NCCL refuses two ranks on one).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seq(lps: list[list[float]]) -> torch.Tensor:
    return torch.tensor([sum(x) for x in lps], dtype=torch.float64)


def main() -> dict:
    import peft
    import transformers

    from actors.learner import LearnerWorker
    from actors.rollout_engine import EngineSpec, make_engine
    from actors.weight_sync import SyncError, WeightSyncer, make_probe, sync_tolerance
    from polyaudio_rl.core import core_algos as ca
    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.grpo_loss import GlobalCounts, TrainItem
    from polyaudio_rl.core.prompts import build_prompt
    from polyaudio_rl.core.tiny import write_tiny
    from tests.conftest import make_sample

    gpu = torch.cuda.is_available()
    res: dict = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                 "gpu": torch.cuda.get_device_name(0) if gpu else None}
    import deepspeed

    res["deepspeed"] = deepspeed.__version__
    ck = str(write_tiny("/tmp/tiny-qwen2-audio-gpucheck", seed=0))
    cfg = load_config(overrides=[
        f"model.path={ck}", f"model.dtype={'bfloat16' if gpu else 'float32'}", f"learner.use_gpu={str(gpu).lower()}",
        "learner.num_workers=1", "learner.micro_batch_size=4", "rollout.engine=hf",
        f"rollout.gpus_per_actor={1 if gpu else 0}", "rollout.max_new_tokens=16", "grpo.group_size=4",
        "grpo.kl_coef=0.0", "grpo.lr=1e-3",
    ])
    t0 = time.time()
    worker = LearnerWorker(cfg, "grpo", 0, 1, ck)
    info = worker.setup("127.0.0.1", _port(), total_steps=1)
    res["learner"] = {"backend": info["backend"], "device": info["device"], "dtype": cfg.model.dtype,
                      "zero_stage": cfg.learner.zero_stage, "trainable_params": info["trainable_params"],
                      "setup_s": time.time() - t0}
    engine = make_engine(ck, cfg.rollout, EngineSpec.from_config(cfg))
    res["engine"] = {"name": engine.name, "device": str(engine.device)}
    tol = sync_tolerance(cfg)
    probe = make_probe(engine.processor, cfg.rollout.probe_tokens)
    probe_item = [TrainItem(probe.prompt, list(probe.completion_ids))]
    syncer = WeightSyncer(engine, probe, "merged", tol, actor=0)
    exp0 = worker.completion_logprobs(probe_item, 1)[0]
    fp0 = syncer.verify(exp0)  # LoRA B = 0: the learner's policy is the base model the engine serves
    res["v0"] = {"probe_max_abs_diff": fp0.max_abs_diff(exp0), "tolerance": tol}

    samples = [make_sample("gpu-a", durations=(1.0, 0.5)),
               make_sample("gpu-b", durations=(0.5, 1.5, 2.0), question="Which clip is the longest?")]
    prompts = [build_prompt(s, engine.processor) for s in samples]
    t = time.time()
    groups = engine.generate(prompts, cfg.grpo.group_size, group_ids=["gpu-a:0", "gpu-b:0"])
    res["generate_s"] = time.time() - t
    items, rewards, gids = [], [], []
    for p, grp in zip(prompts, groups):
        for c in grp.completions:
            items.append(TrainItem(p, list(c.token_ids), old_logprobs=list(c.logprobs), group_id=grp.group_id))
            rewards.append(sum(1 for x in c.token_ids if x % 2 == 0) / max(1, len(c.token_ids)))
            gids.append(grp.group_id)
    adv = ca.compute_advantages(torch.tensor(rewards), gids, cfg.grpo.advantage, cfg.grpo.eps)
    items = [replace(it, advantage=float(a)) for it, a in zip(items, adv.tolist())]
    num_micro = math.ceil(len(items) / cfg.learner.micro_batch_size)
    before = worker.completion_logprobs(items, num_micro)
    behaviour = _seq([it.old_logprobs for it in items])
    res["rollout_vs_learner_seq_logp_max_abs_diff"] = float((behaviour - _seq(before)).abs().max())
    counts = GlobalCounts(tokens=sum(len(it.completion_ids) for it in items), seqs=len(items),
                          norm_len=cfg.rollout.max_new_tokens)
    t = time.time()
    step = worker.grpo_step(items, counts, num_micro)
    res["train_s"] = time.time() - t
    after = worker.completion_logprobs(items, num_micro)
    delta = _seq(after) - _seq(before)
    a = torch.tensor(adv.tolist(), dtype=torch.float64)
    res["grpo_step"] = {"rewards": rewards, "advantages": a.tolist(), "delta_seq_logp": delta.tolist(),
                        "sum_A_dlogp": float((a * delta).sum()), "grad_norm": step["epochs"][-1]["grad_norm"],
                        "loss": step["epochs"][-1]["loss"], "peak_gpu_mb": step["peak_gpu_mb"]}

    expected = worker.completion_logprobs(probe_item, 1)[0]
    res["sync"] = {}
    try:
        syncer.check(fp0, expected, 1)
        res["sync"]["stale_fingerprint_rejected"] = False
    except SyncError:
        res["sync"]["stale_fingerprint_rejected"] = True
    res["sync"]["stale_probe_diff"] = fp0.max_abs_diff(expected)
    for mode in ("merged", "adapter"):
        eng = engine if mode == "merged" else make_engine(ck, cfg.rollout, EngineSpec.from_config(cfg))
        s = syncer if mode == "merged" else WeightSyncer(eng, probe, mode, tol, actor=1)
        t = time.time()
        weights = worker.get_weights(mode)
        got = s.sync(weights, 1, expected)
        res["sync"][mode] = {"tensors": len(weights), "bytes": int(sum(w.numel() * w.element_size()
                                                                      for w in weights.values())),
                             "max_abs_diff": got.max_abs_diff, "push_s": got.push_s, "probe_s": got.probe_s,
                             "total_s": time.time() - t, "version": got.version}
    res["ok"] = bool(res["sync"]["stale_fingerprint_rejected"] and res["grpo_step"]["sum_A_dlogp"] > 0
                     and all(res["sync"][m]["max_abs_diff"] <= tol for m in ("merged", "adapter")))
    return res


if __name__ == "__main__":
    out = Path(os.environ.get("OUT", "/tmp"))
    try:
        result = main()
    except Exception:  # noqa: BLE001 - a device run must bring back what broke
        result = {"ok": False, "error": traceback.format_exc()}
    (out / "gpu_grpo_step_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    sys.exit(0 if result.get("ok") else 1)
