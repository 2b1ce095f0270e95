"""A learner step's metrics: each worker reports its sums, the driver-side handle reduces them to global values.

Workers report per inner epoch the SUMS of their shard (loss share, policy-loss and KL token sums, clipped tokens,
ratio sum, entropy sum, importance-weight sum) plus values that are equal on every rank after the all-reduce
(grad norm, LR) or need a max (ratio max). Dividing the summed sums by the GLOBAL token count gives the same
figures for 1, 2 or 8 workers.
"""
from __future__ import annotations

import resource
import time
from typing import Any

import torch

from polyaudio_rl.core.grpo_loss import GlobalCounts

_SHARED = ("grad_norm", "lr", "ratio_max")  # the same on every rank (after the all-reduce) or reduced by max


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_result(epochs: list[dict[str, float]], t0: float, prep: dict[str, float], device: torch.device
                  ) -> dict[str, Any]:
    """What a worker returns from a step: its per-epoch sums, its step time, peak memory and input-preparation
    counts (``prep``: prompts cached / encoded and the seconds it took)."""
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {"epochs": epochs, "time_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), **prep,
            "peak_gpu_mb": gpu}


def _epoch_sums(results: list[dict[str, Any]], e: int) -> dict[str, float]:
    eps = [r["epochs"][e] for r in results]
    s = {k: sum(x.get(k, 0.0) for x in eps) for k in eps[0] if k not in _SHARED}
    s["grad_norm"], s["lr"] = eps[0]["grad_norm"], eps[0]["lr"]
    s["ratio_max"] = max(x.get("ratio_max", 0.0) for x in eps)
    return s


def _resources(results: list[dict[str, Any]]) -> dict[str, float]:
    m = {
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in results),
        # prompts whose inputs came from the prompt cache (prefetched or met before) / were built in the step
        "prompts_cached": float(sum(r["prompts_cached"] for r in results)),
        "prompts_encoded": float(sum(r["prompts_encoded"] for r in results)),
        "prep_s_max": max(r["prep_s"] for r in results),
        "peak_gpu_mb_max": max(r["peak_gpu_mb"] for r in results),
        **{f"peak_rss_mb_w{i}": r["peak_rss_mb"] for i, r in enumerate(results)},
    }
    if results[0]["peak_gpu_mb"]:
        m.update({f"peak_gpu_mb_w{i}": r["peak_gpu_mb"] for i, r in enumerate(results)})
    return m


def reduce_step(results: list[dict[str, Any]], counts: GlobalCounts, wall: float, step: int) -> dict[str, float]:
    """The step's metrics from every worker's :func:`worker_result`: first-epoch loss and grad norm (the update the
    batch asked for), last-epoch values for μ > 1, token-normalised GRPO statistics or the SFT NLL."""
    n_ep = len(results[0]["epochs"])
    tok = max(counts.tokens, 1)
    per_epoch = [_epoch_sums(results, e) for e in range(n_ep)]
    first, last = per_epoch[0], per_epoch[-1]
    m = {
        "loss": first["loss"], "loss_last_epoch": last["loss"], "grad_norm": first["grad_norm"], "lr": first["lr"],
        "tokens": float(counts.tokens), "sequences": float(counts.seqs), "step": float(step), "time_s": wall,
        "tokens_per_s": counts.tokens * n_ep / wall if wall > 0 else 0.0,
        **_resources(results),
    }
    if "pg_loss_sum" not in first:
        m["nll"] = first["nll_sum"] / tok
        return m
    m.update(
        pg_loss=first["pg_loss_sum"] / tok,
        kl=first["kl_sum"] / tok,
        entropy=first["entropy_sum"] / tok,
        clip_frac=sum(e["clipped_tokens"] for e in per_epoch) / (tok * n_ep),
        clip_frac_last_epoch=last["clipped_tokens"] / tok,
        ratio_mean=sum(e["ratio_sum"] for e in per_epoch) / (tok * n_ep),
        ratio_max=max(e["ratio_max"] for e in per_epoch),
        is_weight_mean=sum(e.get("is_weight_sum", 0.0) for e in per_epoch) / (tok * n_ep),
        grad_norm_last_epoch=last["grad_norm"],
    )
    return m
