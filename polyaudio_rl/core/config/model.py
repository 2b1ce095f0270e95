"""Model section: which audio LLM checkpoint (its family read from its config.json), precision, LoRA."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import cfg_field


@dataclass
class LoraConfig:
    """LoRA adapter on the language model (Hu et al., 2021). The paper fine-tunes its policy with LoRA (§4.1.3)."""

    rank: int = cfg_field(8, "LoRA rank r. Default 8.")
    alpha: int = cfg_field(16, "LoRA scaling alpha; the update is scaled by alpha/rank. Default 16.")
    dropout: float = cfg_field(0.05, "Dropout on the LoRA input. Default 0.05.")
    target_modules: str = cfg_field(
        "",
        "Regex (PEFT `target_modules` as a string) of modules that get adapters. Empty: the model family's, which "
        "hits only the language model's attention and MLP projections; a plain list like ['q_proj'] would also hit "
        "the audio tower.",
    )

    def validate(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be > 0, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    """The policy model: a checkpoint of a supported family (docs/models.md) in hub layout, from a local path."""

    path: str = cfg_field(
        "artifacts/tiny-qwen2-audio",
        "Local directory (or hub id where one can be fetched) of a checkpoint of a supported family (recognised "
        "from its config.json). Default: the tiny random checkpoint of the default family that "
        "`python -m polyaudio_rl.tiny` writes.",
    )
    make_tiny_if_missing: bool = cfg_field(
        True, "If `path` does not exist, write the tiny random checkpoint there first (embedded default only)."
    )
    tiny_seed: int = cfg_field(0, "Seed of the tiny checkpoint written when `make_tiny_if_missing` applies.")
    tiny_family: str = cfg_field(
        "qwen2_audio", "Model family of the tiny checkpoint written when `make_tiny_if_missing` applies "
        "(`python -m polyaudio_rl.tiny --list-families`); configs/demo_<family>.yaml set it to their family.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = cfg_field("float32", "Torch dtype for learner weights: float32 on CPU, bfloat16 on GPUs.")
    freeze_audio_encoder: bool = cfg_field(
        True, "Keep the audio tower and projector frozen (the paper tunes the LLM with LoRA). Default true."
    )
    lora: LoraConfig = cfg_field(LoraConfig(), "LoRA settings.")
    gradient_checkpointing: bool = cfg_field(False, "Recompute activations in backward to save memory (7B on GPUs).")
