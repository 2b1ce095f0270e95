"""Task registry: one generator per task of Table 2, registered by name (like verl's core_algos registries)."""
from __future__ import annotations

from polyaudio_rl.core.registry import Registry

from .base import Context, Draft, GeneratorFn

TASK_REGISTRY: Registry[GeneratorFn] = Registry("task")


def register(name: str):
    """Decorator: register a task generator under ``name``."""
    return TASK_REGISTRY.register(name)


def get_task(name: str) -> GeneratorFn:
    return TASK_REGISTRY[name]


# Importing the modules registers the generators.
from . import (  # noqa: E402,F401
    captioning, chronological_ordering, common_keyword, comparison, counting, entailment, factual_consistency,
    needle_qa, odd_one_out, speaker_linking, temporal_grounding,
)

__all__ = ["TASK_REGISTRY", "register", "get_task", "Context", "Draft"]
