"""Logging section: rollout samples kept during GRPO for people to listen to (``RUN_DIR/samples/``, see
:mod:`polyaudio_rl.samples`) and the run's web page (``RUN_DIR/report.html``, :mod:`polyaudio_rl.report`)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class LoggingConfig:
    """What is kept of the rollouts beside the metrics."""

    rollout_sample_every: int = cfg_field(
        6, "Keep sampled rollout groups every this many GRPO steps (steps 1, 1+N, 1+2N, ...); 0: none. The default "
        "keeps 10 steps of the 60-step demo.")
    rollout_sample_groups: int = cfg_field(
        2, "Groups kept per sampled step (prompt, clips, the G completions, reward components, advantages); one per "
        "task first, in batch order.")
    rollout_sample_max_mb: float = cfg_field(
        50.0, "Most megabytes RUN_DIR/samples/ may grow to (records + clips); later samples are skipped and counted.")
    completion_max_chars: int = cfg_field(2000, "A kept completion's text is cut after this many characters.")
    html_report: bool = cfg_field(True, "Write RUN_DIR/report.html at the end of a training run.")

    def validate(self) -> None:
        if self.rollout_sample_every < 0 or self.rollout_sample_groups < 0 or self.rollout_sample_max_mb < 0:
            raise ValueError("logging.rollout_sample_every, rollout_sample_groups and rollout_sample_max_mb must be >= 0")
        if self.completion_max_chars < 1:
            raise ValueError(f"logging.completion_max_chars must be >= 1, got {self.completion_max_chars}")
