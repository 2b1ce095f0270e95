"""Typed configs: one dataclass per component, composed into :class:`Config`.

Load with :func:`load_config` (YAML file + dotted overrides such as ``grpo.group_size=8``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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
    wandb_mode: str = cfg_field("offline", "wandb mode: offline (default), online, or disabled.")
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
        r = self.reward
        if self.faults.judge_outage_at_step and not (r.correctness_mode in ("judge", "both")
                                                     and r.weights.get("correctness", 0) > 0):
            raise ValueError("faults.judge_outage_at_step needs a judge-scored run (reward.correctness_mode judge or "
                             "both, with a correctness weight > 0)")


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
