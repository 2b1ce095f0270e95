"""The learner's learning-rate multiplier per optimizer step, built from transformers' schedules.

``lr_lambda(warmup, schedule, total)(s)`` is the multiplier of optimizer step ``s`` (0-based): transformers'
``constant_with_warmup`` / ``linear`` / ``cosine`` schedule (``transformers.get_scheduler``) read at step
``min(s + 1, total)``. Reading one step ahead makes the first update run at the warm-up's first increment
(``1 / (warmup + 1)``) or one decay step down (``1 - 1 / total``), and a decay reach 0 at step ``total - 1``;
capping at ``total`` keeps a cosine at 0 past the end instead of rising again. ``total`` <= 0 (unknown) means no
decay. With a warm-up and a decay, transformers' shape holds the peak for one step before decaying.
"""
from __future__ import annotations

from typing import Callable

LR_SCHEDULES = ("constant", "linear", "cosine")
_TRANSFORMERS_NAMES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def lr_lambda(warmup: int, schedule: str, total: int) -> Callable[[int], float]:
    """The multiplier function for ``torch.optim.lr_scheduler.LambdaLR`` (see the module docstring)."""
    import torch
    from transformers import get_scheduler

    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup < 0:
        raise ValueError(f"warm-up steps must be >= 0, got {warmup}")
    name = _TRANSFORMERS_NAMES[schedule if total > 0 else "constant"]
    # transformers' warm-up multiplier is x / num_warmup_steps at step x; read at s + 1 it is (s + 1) / (warmup + 1)
    steps = warmup + 1 if warmup else 0
    # the schedule functions are only reachable through a scheduler: build one on a throwaway optimizer
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    shape = get_scheduler(name, dummy, num_warmup_steps=steps, num_training_steps=max(total, 1)).lr_lambdas[0]
    end = total if total > 0 and schedule != "constant" else None

    def factor(s: int) -> float:
        return float(shape(s + 1 if end is None else min(s + 1, end)))

    return factor
