"""The reward registry: every reward component under one name and one signature.

Item-level rewards (``level="item"``)::

    fn(sample: polyaudio_rl.core.schema.Sample, completion: str, **ctx) -> RewardResult

Group-level rewards (``level="group"``, e.g. consistency, which needs every completion of a group and of the
batch) take the whole batch; see :mod:`rewards.consistency`.

``RewardResult.score`` is a float in [0, 1], or ``None`` when the item could not be scored (e.g. the judge
endpoint is down): callers count unscored items and never replace them by 0. ``info`` holds what is worth logging
(what was parsed, why it failed).

The registered components are the keys of ``reward.weights`` in the config
(:data:`polyaudio_rl.core.config.reward.REWARD_COMPONENTS`): ``correctness``, ``parsimony``, ``consistency``, ``format``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from polyaudio_rl.core.registry import Registry
from polyaudio_rl.core.schema import KEY_TYPES, TASKS, Sample


class RewardError(ValueError):
    """A sample cannot be rewarded (unknown task, no key, bad key); the message names the sample."""


@dataclass
class RewardResult:
    """One reward for one completion: ``score`` in [0, 1] or None (unscored), plus loggable ``info``."""

    score: float | None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.score is not None:
            s = float(self.score)
            if math.isnan(s) or not -1e-9 <= s <= 1 + 1e-9:
                raise ValueError(f"reward score must be in [0, 1] or None, got {self.score!r} ({self.info})")
            self.score = min(1.0, max(0.0, s))

    @property
    def unscored(self) -> bool:
        return self.score is None


@dataclass(frozen=True)
class RewardSpec:
    name: str
    fn: Callable[..., Any]
    level: str  # "item" | "group"
    doc: str


REWARDS: Registry[RewardSpec] = Registry("reward")


def register_reward(name: str, level: str = "item") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as reward component ``name`` (``level`` "item" or "group")."""
    if level not in ("item", "group"):
        raise ValueError(f"reward {name}: level must be 'item' or 'group', got {level!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REWARDS and REWARDS[name].fn is fn:
            return fn  # the module was imported again
        REWARDS.add(name, RewardSpec(name, fn, level, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return deco


def get_reward(name: str) -> RewardSpec:
    """The registered component ``name``; an unknown name is an error listing the known ones."""
    _load_builtin()
    return REWARDS[name]


def list_rewards() -> list[str]:
    _load_builtin()
    return sorted(REWARDS)


def _load_builtin() -> None:
    # importing the modules registers their rewards
    from . import consistency, format, parsimony, verifiers  # noqa: F401


def check_sample(sample: Sample) -> None:
    """Raise :class:`RewardError` naming the sample when it cannot be rewarded (task, key, clips)."""
    sid = getattr(sample, "id", "<no id>")
    if not isinstance(sample, Sample):
        raise RewardError(f"sample {sid}: expected a polyaudio_rl.core.schema.Sample, got {type(sample).__name__}")
    if sample.task not in TASKS:
        raise RewardError(f"sample {sid}: unknown task {sample.task!r} (known: {', '.join(TASKS)})")
    if not isinstance(sample.key, dict) or not sample.key:
        raise RewardError(f"sample {sid} (task {sample.task}): no ground-truth key")
    if sample.key.get("type") not in KEY_TYPES:
        raise RewardError(f"sample {sid} (task {sample.task}): key.type {sample.key.get('type')!r} not in {KEY_TYPES}")
    if sample.key["type"] != "interval" and "value" not in sample.key:
        raise RewardError(f"sample {sid} (task {sample.task}): key of type {sample.key['type']} has no 'value'")
    if not sample.clips:
        raise RewardError(f"sample {sid} (task {sample.task}): no clips")
