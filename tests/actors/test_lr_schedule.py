"""The learner's LR multiplier per optimizer step (actors/lr_schedule.py): hand-computed values, the demo's included."""
import pytest


@pytest.mark.parametrize("warmup,schedule,total,step,factor", [
    # the demo's GRPO schedule: warm-up 0, linear decay over 60 steps x 2 inner epochs = 120 optimizer steps,
    # multiplier (120 - s - 1) / 120 at optimizer step s
    (0, "linear", 120, 0, 119 / 120), (0, "linear", 120, 1, 118 / 120), (0, "linear", 120, 59, 60 / 120),
    (0, "linear", 120, 118, 1 / 120), (0, "linear", 120, 119, 0.0), (0, "linear", 120, 130, 0.0),
    # constant (the demo's SFT and every other stage): 1 at every step, whatever the total
    (0, "constant", 120, 0, 1.0), (0, "constant", 120, 119, 1.0), (0, "constant", 10, 25, 1.0),
    (0, "linear", 4, 0, 0.75), (0, "linear", 4, 1, 0.5), (0, "linear", 4, 3, 0.0), (0, "linear", 4, 9, 0.0),
    (0, "cosine", 4, 0, 0.5 + 2 ** 0.5 / 4), (0, "cosine", 4, 1, 0.5), (0, "cosine", 4, 3, 0.0), (0, "cosine", 4, 6, 0.0),
    # warm-up: (s + 1) / (warmup + 1), then transformers' decay from the peak at step `warmup`
    (2, "constant", 6, 0, 1 / 3), (2, "constant", 6, 1, 2 / 3), (2, "constant", 6, 2, 1.0), (2, "constant", 1, 5, 1.0),
    (2, "linear", 6, 0, 1 / 3), (2, "linear", 6, 1, 2 / 3), (2, "linear", 6, 2, 1.0), (2, "linear", 6, 3, 2 / 3),
    (2, "linear", 6, 5, 0.0),
    (0, "linear", 0, 5, 1.0),  # total unknown: no decay
])
def test_lr_schedule_table(warmup, schedule, total, step, factor):
    from actors.lr_schedule import lr_lambda

    assert lr_lambda(warmup, schedule, total)(step) == pytest.approx(factor, abs=1e-9)


@pytest.mark.parametrize("warmup,schedule", [(-1, "linear"), (0, "step")])
def test_lr_schedule_rejects_bad_settings(warmup, schedule):
    from actors.lr_schedule import lr_lambda

    with pytest.raises(ValueError, match="warm-up|lr schedule"):
        lr_lambda(warmup, schedule, 10)
