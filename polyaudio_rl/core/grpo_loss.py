"""The GRPO and SFT losses of one micro-batch, normalised by the step's global counts.

Each worker's micro-batch loss is its share of the whole step's loss (``core_algos.agg_loss`` with the token and
sequence counts over all workers), so the sum over shards equals the full-batch loss whatever the sharding. The
per-token pieces (policy loss, importance correction, KL estimator, aggregation) come from
:mod:`polyaudio_rl.core.core_algos`; the log-probs from :mod:`polyaudio_rl.core.policy_forward`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import core_algos as ca
from .batching import MicroBatch


@dataclass
class GlobalCounts:
    """Normalisers of one step over ALL workers (see core_algos.agg_loss)."""

    tokens: int
    seqs: int
    norm_len: int


def grpo_microbatch_loss(
    logp: torch.Tensor,
    mb: MicroBatch,
    ref_logp: torch.Tensor | None,
    grpo_cfg: Any,
    counts: GlobalCounts,
    prox_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the step loss (global normalisers) and its metric sums. ``prox_logp``: the
    learner's log-probs before the update, needed by ``grpo.is_correction='tis'`` (see core_algos)."""
    mask = mb.mask
    adv = mb.advantages
    pg, clipped, is_w = ca.is_corrected_policy_loss(
        grpo_cfg.policy_loss, grpo_cfg.is_correction, logp, mb.old_logp, prox_logp, adv, grpo_cfg.clip_low,
        grpo_cfg.clip_high, grpo_cfg.tis_cap)
    tok_loss = pg
    kl = None
    if ref_logp is not None and grpo_cfg.kl_coef > 0:
        kl = ca.get_kl_estimator(grpo_cfg.kl_estimator)(logp, ref_logp)
        tok_loss = pg + grpo_cfg.kl_coef * kl
    loss = ca.agg_loss(
        tok_loss, mask, grpo_cfg.loss_agg, global_tokens=counts.tokens, global_seqs=counts.seqs, norm_len=counts.norm_len
    )
    with torch.no_grad():
        ratio = torch.exp(logp - mb.old_logp)
        stats = {
            "pg_loss_sum": float((pg * mask).sum()),
            "kl_sum": float((kl * mask).sum()) if kl is not None else 0.0,
            "clipped_tokens": float((clipped.float() * mask).sum()),
            "ratio_sum": float((ratio * mask).sum()),
            "ratio_max": float(ratio[mask > 0].max()) if (mask > 0).any() else 0.0,
            "tokens": float(mask.sum()),
            "is_weight_sum": float((is_w * mask).sum()) if is_w is not None else float(mask.sum()),
        }
    return loss, stats


def sft_microbatch_loss(logp: torch.Tensor, mb: MicroBatch, counts: GlobalCounts) -> tuple[torch.Tensor, dict[str, float]]:
    """Answer-token NLL, token-mean over the global batch."""
    loss = ca.agg_loss(-logp, mb.mask, "token-mean", global_tokens=counts.tokens)
    with torch.no_grad():
        stats = {"nll_sum": float((-logp * mb.mask).sum()), "tokens": float(mb.mask.sum())}
    return loss, stats
