"""The GRPO objective as pure tensor math, with registries in the spirit of verl's ``core_algos.py``.

Nothing here knows about models, Ray or DeepSpeed: every function maps tensors to tensors, so each piece
has a table test with hand-computed values (tests/polyaudio_rl/test_core_algos.py).

Pieces (each a registry where the choices multiply):

* advantage estimators  ``ADV_ESTIMATORS``  — 'grpo' (group mean/std, DeepSeekMath), 'drgrpo' (group mean only,
  Liu et al. 2025 "Understanding R1-Zero-Like Training"), 'batch_std' (group mean, batch std: "Lite PPO",
  Liu et al. 2025 "Tricks or Traps?"), 'reinforce_pp' (batch mean and std, no group baseline: REINFORCE++,
  Hu et al. 2025);
* policy losses         ``POLICY_LOSSES``   — 'ppo_clip': the PPO clipped surrogate with decoupled ε_low/ε_high (DAPO),
  the ratio taken against the rollout (behaviour) log-probs;
* KL estimators         ``KL_ESTIMATORS``   — 'k1', 'k2', 'k3' (Schulman 2020, "Approximating KL divergence");
  GRPO uses k3 = exp(ref − logp) − (ref − logp) − 1 (DeepSeekMath eq. 4);
* loss aggregations     ``LOSS_AGGS``       — 'token-mean' (DAPO), 'seq-mean-token-mean' (GRPO),
  'seq-mean-token-sum-norm' (Dr. GRPO). Each divides by GLOBAL counts passed in (tokens / sequences over all
  learner workers), so the sum over shards equals the full-batch loss and gradient whatever the sharding;
* dynamic sampling      ``zero_spread_filter`` — drop groups whose rewards have zero spread (DAPO).

Conventions: ``mask`` is 1.0 on completion (response) tokens and 0.0 on prompt and padding; a loss matrix is
``[batch, tokens]``; advantages are per sequence ``[batch]`` (broadcast over tokens) or per token.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

from .registry import Registry

# --------------------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------------------
ADV_ESTIMATORS: Registry[Callable[..., torch.Tensor]] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = Registry("policy loss")
KL_ESTIMATORS: Registry[Callable[..., torch.Tensor]] = Registry("KL estimator")
LOSS_AGGS: Registry[Callable[..., torch.Tensor]] = Registry("loss aggregation")
IS_CORRECTIONS: Registry[Callable[..., torch.Tensor | None]] = Registry("importance-sampling correction")


def register_adv_estimator(name: str):
    """Decorator: ``fn(rewards[N], group_index[N] (0..K-1), eps) -> advantages[N]``."""
    return ADV_ESTIMATORS.register(name)


def register_policy_loss(name: str):
    """Decorator: ``fn(logp, old_logp, advantages, clip_low, clip_high) -> (loss[B,T], clipped[B,T] bool)``."""
    return POLICY_LOSSES.register(name)


def register_kl_estimator(name: str):
    """Decorator: ``fn(logp, ref_logp) -> kl[B,T]`` (per-token estimate of KL(π || π_ref), samples from π)."""
    return KL_ESTIMATORS.register(name)


def register_loss_agg(name: str):
    """Decorator: ``fn(loss[B,T], mask[B,T], global_tokens, global_seqs, norm_len) -> scalar``."""
    return LOSS_AGGS.register(name)


def register_is_correction(name: str):
    """Decorator: ``fn(prox_logp, behav_logp, cap) -> weights[B,T] or None`` (None: no correction)."""
    return IS_CORRECTIONS.register(name)


def get_adv_estimator(name: str):
    return ADV_ESTIMATORS[name]


def get_policy_loss(name: str):
    return POLICY_LOSSES[name]


def get_kl_estimator(name: str):
    return KL_ESTIMATORS[name]


def get_loss_agg(name: str):
    return LOSS_AGGS[name]


# --------------------------------------------------------------------------------------------------------------
# groups and advantages
# --------------------------------------------------------------------------------------------------------------
def group_index(group_ids: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """Map arbitrary group ids (prompt ids, ints, strings) to 0..K-1 in order of first appearance."""
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    seen: dict[Hashable, int] = {}
    return torch.tensor([seen.setdefault(g, len(seen)) for g in group_ids], dtype=torch.long)


def group_mean_std(rewards: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element: its group's mean, unbiased std (n−1; 0 for a group of one) and size."""
    rewards = rewards.to(torch.float64)
    k = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(k, dtype=torch.float64).scatter_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=torch.float64).scatter_add_(0, index, rewards)
    mean = total / count
    sq = torch.zeros(k, dtype=torch.float64).scatter_add_(0, index, (rewards - mean[index]) ** 2)
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.zeros_like(sq))
    return mean[index], var.sqrt()[index], count[index]


@register_adv_estimator("grpo")
def adv_grpo(rewards: torch.Tensor, index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_group) / (std_group + ε)  (DeepSeekMath §4.1.2, outcome supervision)."""
    mean, std, _ = group_mean_std(rewards, index)
    return ((rewards.double() - mean) / (std + eps)).to(rewards.dtype)


@register_adv_estimator("drgrpo")
def adv_drgrpo(rewards: torch.Tensor, index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i − mean_group: Dr. GRPO drops the std division (it biases towards easy/hard prompts)."""
    mean, _, _ = group_mean_std(rewards, index)
    return (rewards.double() - mean).to(rewards.dtype)


@register_adv_estimator("batch_std")
def adv_batch_std(rewards: torch.Tensor, index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_group) / (std_batch + ε): group baseline, one batch-wide scale (unbiased std of all r)."""
    mean, _, _ = group_mean_std(rewards, index)
    r = rewards.double()
    std = r.std(unbiased=True) if r.numel() > 1 else torch.zeros((), dtype=torch.float64)
    return ((r - mean) / (std + eps)).to(rewards.dtype)


@register_adv_estimator("reinforce_pp")
def adv_reinforce_pp(rewards: torch.Tensor, index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_batch) / (std_batch + ε): REINFORCE++'s global normalisation (Hu et al. 2025), no group
    baseline. A group whose completions all score the same still carries signal: all wrong → negative, all right →
    positive (a group baseline gives it 0, so a wrong answer no sample of the group beat is never pushed down)."""
    r = rewards.double()
    if r.numel() < 2:
        return torch.zeros_like(rewards)
    return ((r - r.mean()) / (r.std(unbiased=True) + eps)).to(rewards.dtype)


def compute_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-completion advantages from scalar rewards and the group (prompt) each completion belongs to."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 1 or len(group_ids) != rewards.numel():
        raise ValueError(f"rewards must be 1-D with one group id each; got {tuple(rewards.shape)} and {len(group_ids)} ids")
    if not torch.isfinite(rewards).all():
        bad = [i for i, r in enumerate(rewards.tolist()) if not torch.isfinite(torch.tensor(r))]
        raise ValueError(f"non-finite rewards at completions {bad}")
    return get_adv_estimator(estimator)(rewards, group_index(group_ids), eps)


def zero_spread_filter(
    rewards: torch.Tensor | Sequence[float], group_ids: Sequence[Hashable] | torch.Tensor, tol: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Dynamic sampling (DAPO): keep-mask over completions dropping groups with max−min reward ≤ tol.

    Returns ``(keep[N] bool, dropped_group_fraction)``. Such groups have all-zero GRPO advantages and only
    dilute the token normalisation.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    index = group_index(group_ids)
    k = int(index.max()) + 1 if index.numel() else 0
    if k == 0:
        return torch.zeros(0, dtype=torch.bool), 0.0
    gmax = torch.full((k,), -torch.inf, dtype=torch.float64).scatter_reduce_(0, index, rewards, "amax")
    gmin = torch.full((k,), torch.inf, dtype=torch.float64).scatter_reduce_(0, index, rewards, "amin")
    keep_group = (gmax - gmin) > tol
    return keep_group[index], float((~keep_group).sum()) / k



# --------------------------------------------------------------------------------------------------------------
# token log-probs and entropy
# --------------------------------------------------------------------------------------------------------------
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(label | ·) for each position: logits [..., V], labels [...] → [...] (float32 softmax)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(π(·)) per position: logits [..., V] → [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --------------------------------------------------------------------------------------------------------------
# policy loss
# --------------------------------------------------------------------------------------------------------------
@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate, to be minimised:

        ρ = exp(logp − old_logp);  loss = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))

    ``old_logp`` are the rollout (behaviour-policy) log-probs. ``clipped`` marks tokens where the clipped branch
    is the active one (its gradient is zero): A>0 and ρ>1+ε_high, or A<0 and ρ<1−ε_low.
    """
    if advantages.ndim == logp.ndim - 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped_obj = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_obj)
    return loss, clipped_obj > unclipped


# --------------------------------------------------------------------------------------------------------------
# off-policy correction (grpo.max_policy_lag > 0)
# --------------------------------------------------------------------------------------------------------------
@register_is_correction("none")
def no_is_correction(prox_logp: torch.Tensor, behav_logp: torch.Tensor, cap: float = 0.0) -> None:
    """No correction: the clipped ratio is taken against the behaviour (rollout) log-probs, as on-policy GRPO."""
    return None


@register_is_correction("tis")
def truncated_is_weights(prox_logp: torch.Tensor, behav_logp: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance sampling (verl / NeMo-RL "TIS"; the decoupled objective of AReaL):

        w = min(exp(prox_logp − behav_logp), cap)        (per token, no gradient)

    ``behav_logp`` are the log-probs of the (possibly stale) policy that sampled the tokens; ``prox_logp`` those
    of the learner's current policy before this step's update. The clipped ratio is then taken against
    ``prox_logp`` and the per-token loss is multiplied by ``w``: the update stays a trust-region step around the
    current policy while the sample is re-weighted towards it; the cap bounds the variance a stale sample adds.
    """
    if cap <= 0:
        raise ValueError(f"TIS cap must be > 0, got {cap}")
    return torch.exp(prox_logp - behav_logp).clamp(max=cap).detach()


def is_corrected_policy_loss(policy_loss: str, correction: str, logp: torch.Tensor, behav_logp: torch.Tensor,
                             prox_logp: torch.Tensor | None, advantages: torch.Tensor, clip_low: float,
                             clip_high: float, cap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The policy loss with an optional importance-sampling correction: ``(loss[B,T], clipped[B,T], weights)``.

    Without a correction (or without ``prox_logp``) this is ``POLICY_LOSSES[policy_loss]`` against the behaviour
    log-probs; with one, the ratio is against ``prox_logp`` and the loss is weighted per token.
    """
    weights = IS_CORRECTIONS[correction](prox_logp, behav_logp, cap) if prox_logp is not None else None
    anchor = behav_logp if weights is None else prox_logp
    loss, clipped = POLICY_LOSSES[policy_loss](logp, anchor, advantages, clip_low, clip_high)
    return (loss if weights is None else loss * weights), clipped, weights


# --------------------------------------------------------------------------------------------------------------
# KL to the reference
# --------------------------------------------------------------------------------------------------------------
@register_kl_estimator("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """k1 = logp − ref (unbiased, high variance, can be negative)."""
    return logp - ref_logp


@register_kl_estimator("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """k2 = ½ (logp − ref)² (biased, low variance)."""
    return 0.5 * (logp - ref_logp) ** 2


@register_kl_estimator("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (unbiased, low variance; DeepSeekMath eq. 4).

    The result is clamped to [−clamp, clamp] (as verl's 'low_var_kl') so one wild token cannot blow up a step.
    """
    d = ref_logp - logp
    return torch.clamp(torch.exp(d) - d - 1.0, min=-clamp, max=clamp)


# --------------------------------------------------------------------------------------------------------------
# loss aggregation (global normalisers)
# --------------------------------------------------------------------------------------------------------------
def _count(value: float | int | torch.Tensor | None, local: torch.Tensor) -> torch.Tensor:
    if value is None:
        return local
    return torch.as_tensor(value, dtype=local.dtype, device=local.device)


@register_loss_agg("token-mean")
def agg_token_mean(loss, mask, global_tokens=None, global_seqs=None, norm_len=None):
    """Σ_i Σ_t l·m / N_tokens (all tokens of the global batch weigh the same; DAPO)."""
    total = (loss * mask).sum()
    return total / _count(global_tokens, mask.sum()).clamp(min=1)


@register_loss_agg("seq-mean-token-mean")
def agg_seq_mean_token_mean(loss, mask, global_tokens=None, global_seqs=None, norm_len=None):
    """(1/N_seqs) Σ_i (Σ_t l·m / |o_i|): per-sequence token mean, then mean over sequences (GRPO paper)."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    local_seqs = (mask.sum(-1) > 0).sum().to(loss.dtype)
    return per_seq.sum() / _count(global_seqs, local_seqs).clamp(min=1)


@register_loss_agg("seq-mean-token-sum-norm")
def agg_seq_mean_token_sum_norm(loss, mask, global_tokens=None, global_seqs=None, norm_len=None):
    """Σ_i Σ_t l·m / (N_seqs · L): a constant length L (the generation budget) replaces |o_i| (Dr. GRPO)."""
    if norm_len is None or norm_len <= 0:
        raise ValueError("loss aggregation 'seq-mean-token-sum-norm' needs norm_len > 0 (the max completion length)")
    local_seqs = (mask.sum(-1) > 0).sum().to(loss.dtype)
    return (loss * mask).sum() / (_count(global_seqs, local_seqs).clamp(min=1) * float(norm_len))


def agg_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    global_tokens: float | int | torch.Tensor | None = None,
    global_seqs: float | int | torch.Tensor | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Aggregate a ``[B, T]`` loss matrix into a scalar.

    Pass ``global_tokens`` (Σ mask over the whole step, all workers) and ``global_seqs`` (number of sequences with
    at least one response token, all workers); then Σ over shards of ``agg_loss(shard)`` equals
    ``agg_loss(full batch)``, and so do the gradients. Left as None they default to this shard's own counts.
    """
    if loss.shape != mask.shape:
        raise ValueError(f"loss {tuple(loss.shape)} and mask {tuple(mask.shape)} differ in shape")
    return get_loss_agg(mode)(loss, mask.to(loss.dtype), global_tokens, global_seqs, norm_len)


def global_counts(mask: torch.Tensor) -> tuple[int, int]:
    """(tokens, sequences-with-tokens) of a mask: what a driver sums over all shards before a step."""
    return int(mask.sum()), int((mask.sum(-1) > 0).sum())
