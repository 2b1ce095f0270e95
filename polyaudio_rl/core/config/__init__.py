"""Typed configs: one dataclass per component, composed into :class:`Config`.

Load with :func:`load_config` (YAML file + dotted overrides such as ``grpo.group_size=8``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from .base import ConfigError, build, cfg_field, describe, load_yaml, parse_override, set_dotted, to_dict
from .data import DataConfig
from .eval import EvalConfig
from .faults import FaultsConfig
from .grpo import GRPOConfig
from .learner import LearnerConfig
from .logs import LoggingConfig
from .model import LoraConfig, ModelConfig
from .reward import JudgeConfig, RewardConfig
from .rollout import RolloutConfig
from .serve import ServeConfig
from .sft import SFTConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tiny_cpu.yaml"


@dataclass
class Config:
    """The whole run: one section per component."""

    seed: int = cfg_field(0, "Global seed (data order, sampling, LoRA init).")
    run_dir: str = cfg_field("", "Where metrics, checkpoints and plots go (default runs/<timestamp>).")
    ray_address: str = cfg_field("", "Ray cluster to join ('auto', ray://host:port); empty: RAY_ADDRESS or a local one.")
    ray_num_cpus: int = cfg_field(0, "Logical CPUs of a local Ray (0: Ray's default). Serve on 2 cores needs ~6.")
    wandb_mode: Literal["offline", "online", "disabled"] = cfg_field(
        "offline", "wandb mode: offline (default), online, or disabled.")
    data: DataConfig = cfg_field(DataConfig(), "Data and prompt limits.")
    model: ModelConfig = cfg_field(ModelConfig(), "Policy checkpoint and LoRA.")
    rollout: RolloutConfig = cfg_field(RolloutConfig(), "Rollout engine and actors.")
    reward: RewardConfig = cfg_field(RewardConfig(), "Reward components and judge.")
    learner: LearnerConfig = cfg_field(LearnerConfig(), "DeepSpeed learners.")
    grpo: GRPOConfig = cfg_field(GRPOConfig(), "GRPO objective.")
    sft: SFTConfig = cfg_field(SFTConfig(), "LoRA SFT stage.")
    serve: ServeConfig = cfg_field(ServeConfig(), "Ray Serve endpoints.")
    eval: EvalConfig = cfg_field(EvalConfig(), "Evaluation.")
    faults: FaultsConfig = cfg_field(FaultsConfig(), "Failures injected on purpose (chaos runs, rehearsals); off by default.")
    logging: LoggingConfig = cfg_field(LoggingConfig(), "Rollout samples kept for listening; the run's web page.")

    def validate(self) -> None:
        """Checks across sections: settings that each pass alone but do not work together."""
        problems = [msg for bad, msg in _cross_checks(self) if bad]
        if problems:
            raise ValueError("; ".join(problems))


def _cross_checks(c: "Config") -> list[tuple[bool, str]]:
    """(is it wrong, what to change) for each cross-section rule."""
    r, g, ro = c.reward, c.grpo, c.rollout
    return [
        (bool(c.faults.judge_outage_at_step) and not (r.correctness_mode in ("judge", "both")
                                                     and r.weights.get("correctness", 0) > 0),
         "faults.judge_outage_at_step needs a judge-scored run (reward.correctness_mode judge or both, with a "
         "correctness weight > 0)"),
        (g.is_correction != "none" and g.max_policy_lag == 0,
         f"grpo.is_correction={g.is_correction} corrects for batches sampled by an older policy, but "
         "grpo.max_policy_lag is 0 (synchronous): set grpo.max_policy_lag >= 1 or grpo.is_correction=none"),
        (g.kl_coef > 0 and g.kl_reference == "init" and c.learner.zero_stage == 3,
         "grpo.kl_reference=init swaps a copy of the starting adapter in for the reference pass, which ZeRO-3's "
         "partitioned weights do not allow: set learner.zero_stage 2 or grpo.kl_reference=base"),
        (c.learner.backend == "nccl" and not c.learner.use_gpu,
         "learner.backend=nccl needs learner.use_gpu: true (NCCL runs on GPUs; gloo or auto on CPU)"),
        (ro.sync_mode == "adapter" and 0 < ro.max_lora_rank < c.model.lora.rank,
         f"rollout.sync_mode=adapter: rollout.max_lora_rank {ro.max_lora_rank} is below model.lora.rank "
         f"{c.model.lora.rank}, so the engine cannot load the adapter (0: take model.lora.rank)"),
        (ro.max_new_tokens >= ro.max_model_len,
         f"rollout.max_new_tokens ({ro.max_new_tokens}) leaves no room for the prompt in rollout.max_model_len "
         f"({ro.max_model_len})"),
        (c.eval.serve_bench and c.serve.max_clips < c.data.max_clips,
         f"eval.serve_bench: serve.max_clips ({c.serve.max_clips}) is below data.max_clips ({c.data.max_clips}), so "
         "the served adapter would refuse the bench's longest items"),
    ]


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (default ``configs/tiny_cpu.yaml``) and apply dotted ``overrides``."""
    tree: dict[str, Any] = load_yaml(path or DEFAULT_CONFIG)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value, Config)
    return build(Config, tree)


__all__ = [
    "Config", "ConfigError", "DataConfig", "EvalConfig", "FaultsConfig", "GRPOConfig", "JudgeConfig", "LearnerConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "RewardConfig", "RolloutConfig", "SFTConfig", "ServeConfig",
    "build", "describe", "load_config", "to_dict", "DEFAULT_CONFIG",
]
