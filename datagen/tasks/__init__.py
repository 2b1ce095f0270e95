"""Task registry: one generator per task of Table 2, registered by name (like verl's core_algos registries)."""
from __future__ import annotations

from .base import Context, Draft, GeneratorFn

TASK_REGISTRY: dict[str, GeneratorFn] = {}


def register(name: str):
    def deco(fn: GeneratorFn) -> GeneratorFn:
        if name in TASK_REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        TASK_REGISTRY[name] = fn
        return fn

    return deco


def get_task(name: str) -> GeneratorFn:
    if name not in TASK_REGISTRY:
        raise KeyError(f"unknown task {name!r} (registered: {', '.join(sorted(TASK_REGISTRY))})")
    return TASK_REGISTRY[name]


# Importing the modules registers the generators.
from . import (  # noqa: E402,F401
    captioning, chronological_ordering, common_keyword, comparison, counting, entailment, factual_consistency,
    needle_qa, odd_one_out, speaker_linking, temporal_grounding,
)

__all__ = ["TASK_REGISTRY", "register", "get_task", "Context", "Draft"]
