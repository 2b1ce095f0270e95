"""GRPO section: group size, advantages, clipping, KL, loss aggregation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import LRSchedule, cfg_field

# the names of core_algos' registries (tests/polyaudio_rl/core/test_config.py checks that they agree)
AdvantageEstimator = Literal["grpo", "drgrpo", "batch_std", "reinforce_pp"]
PolicyLoss = Literal["ppo_clip"]
ISCorrection = Literal["none", "tis"]
KLEstimator = Literal["k1", "k2", "k3"]
KLReference = Literal["base", "init"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) with DAPO/Dr. GRPO options."""

    group_size: int = cfg_field(8, "G: completions sampled per prompt (DeepSeekMath uses 64; r1-aqa 8).")
    prompts_per_step: int = cfg_field(4, "Prompts per GRPO step; the step trains on prompts_per_step × G completions.")
    steps: int = cfg_field(20, "Number of GRPO steps.")
    advantage: AdvantageEstimator = cfg_field(
        "grpo", "Advantage estimator: 'grpo' (group mean/std), 'drgrpo' (mean only, Liu et al. 2025), 'batch_std' "
        "(group mean, batch std), 'reinforce_pp' (batch mean/std, no group baseline: REINFORCE++, Hu et al. 2025)."
    )
    policy_loss: PolicyLoss = cfg_field(
        "ppo_clip", "Policy loss from core_algos.POLICY_LOSSES: 'ppo_clip', the clipped surrogate (PPO; DAPO's decoupled ε)."
    )
    max_policy_lag: int = cfg_field(
        0, "k: most policy versions a trained group may lag the learner. 0: synchronous (generate, then train); "
        "k >= 1: rollouts for the next k steps are generated while the current step trains (AReaL's "
        "max_head_offpolicyness, NeMo-RL's max_trajectory_age_steps). A group older than k is dropped and counted."
    )
    is_correction: ISCorrection = cfg_field(
        "none", "Off-policy correction from core_algos.IS_CORRECTIONS: 'none' (ratio vs the behaviour log-probs) or "
        "'tis' (truncated importance sampling, verl/NeMo-RL: ratio vs the learner's pre-update log-probs, loss × "
        "min(π_prox/π_behav, tis_cap)). Meant for max_policy_lag > 0."
    )
    tis_cap: float = cfg_field(2.0, "Cap of the truncated importance weights (grpo.is_correction='tis').")
    clip_low: float = cfg_field(0.2, "ε_low of the clipped surrogate (PPO: 0.2; DAPO decouples low/high).")
    clip_high: float = cfg_field(0.28, "ε_high of the clipped surrogate (DAPO 'clip-higher': 0.28).")
    kl_coef: float = cfg_field(0.04, "β, the k3 KL coefficient to the reference policy (DeepSeekMath: 0.04). 0 skips it.")
    kl_estimator: KLEstimator = cfg_field(
        "k3", "Per-token KL estimator to the reference (grpo.kl_reference): k1, k2 or k3 (Schulman 2020)."
    )
    kl_reference: KLReference = cfg_field(
        "base", "The KL reference policy: 'base' (the base model, the adapter disabled: TRL's and verl's reference "
        "with LoRA) or 'init' (the adapter this GRPO stage started from: the SFT policy, or --init-adapter; "
        "DeepSeekMath's reference is the SFT model). Without a starting adapter the two are the same (LoRA's B "
        "starts at 0). 'init' keeps a copy of the trainable weights and swaps it in for the reference pass."
    )
    loss_agg: LossAgg = cfg_field(
        "token-mean", "Loss aggregation: token-mean (DAPO), seq-mean-token-mean (GRPO), seq-mean-token-sum-norm (Dr. GRPO)."
    )
    loss_norm_len: int = cfg_field(
        0, "L of 'seq-mean-token-sum-norm' (Dr. GRPO's constant length); 0: rollout.max_new_tokens. Must be global."
    )
    inner_epochs: int = cfg_field(1, "μ: policy updates per rollout batch (DeepSeekMath μ); >1 makes clipping bite.")
    dynamic_sampling: bool = cfg_field(False, "Drop groups whose rewards have zero spread (DAPO) and log the fraction.")
    zero_spread_tol: float = cfg_field(0.0, "A group counts as zero-spread when max−min reward <= this (dynamic sampling).")
    eps: float = cfg_field(1e-6, "ε added to the group std in 'grpo' normalisation.")
    lr: float = cfg_field(1e-5, "Learning rate for GRPO (LoRA parameters).")
    lr_schedule: LRSchedule = cfg_field(
        "constant", "LR after the warm-up (learner.warmup_steps): 'constant', or 'linear' / 'cosine' decay to 0 at the "
        "last GRPO step (steps × inner_epochs optimizer steps; verl's actor optim.lr_scheduler_type: constant / "
        "cosine). Default constant.")

    def validate(self) -> None:
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"grpo.clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0:
            raise ValueError(f"grpo.kl_coef must be >= 0, got {self.kl_coef}")
        if self.inner_epochs < 1:
            raise ValueError(f"grpo.inner_epochs must be >= 1, got {self.inner_epochs}")
        if self.max_policy_lag < 0:
            raise ValueError(f"grpo.max_policy_lag must be >= 0, got {self.max_policy_lag}")
        if self.tis_cap <= 0:
            raise ValueError(f"grpo.tis_cap must be > 0, got {self.tis_cap}")
