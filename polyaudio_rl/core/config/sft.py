"""SFT section: LoRA supervised fine-tuning, stage 1 (paper §4.1.3)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import LRSchedule, cfg_field


@dataclass
class SFTConfig:
    """LoRA SFT on the train split; loss on answer tokens only."""

    epochs: int = cfg_field(1, "Passes over the train split.")
    max_steps: int = cfg_field(0, "Stop after this many optimizer steps (0: no limit).")
    batch_size: int = cfg_field(8, "Samples per optimizer step (over all workers).")
    lr: float = cfg_field(2e-4, "Learning rate for the LoRA parameters.")
    lr_schedule: LRSchedule = cfg_field(
        "constant", "LR after the warm-up (learner.warmup_steps): 'constant', or 'linear' / 'cosine' decay to 0 at the "
        "stage's last step (TRL's SFTTrainer decays linearly by default). Default constant.")

