"""Serve section: Ray Serve hosting of the policy and the judge."""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class ServeConfig:
    """Ray Serve OpenAI-compatible endpoints (policy and judge)."""

    host: str = cfg_field("127.0.0.1", "Bind address. Loopback unless told otherwise.")
    port: int = cfg_field(8000, "HTTP port.")
    policy_replicas: int = cfg_field(1, "Replicas of the policy deployment.")
    judge_replicas: int = cfg_field(1, "Replicas of the judge deployment.")
    max_body_mb: float = cfg_field(64.0, "Largest request body accepted (MB); larger gets HTTP 413.")
