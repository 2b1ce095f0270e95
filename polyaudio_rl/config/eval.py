"""Eval section: PolyAudio-Bench and MMAU(-Pro) evaluation."""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class EvalConfig:
    """Evaluation protocol (§3.2.2, §4.1)."""

    max_items: int = cfg_field(0, "Evaluate at most this many items (0: all).")
    concurrency: int = cfg_field(4, "Requests in flight against the policy endpoint.")
    max_new_tokens: int = cfg_field(64, "Most tokens generated per answer.")
    baseline_protocol: str = cfg_field(
        "native", "How clips reach the model: 'native' (several audios), 'concat' (one audio, 2 s silence), 'pair'."
    )
