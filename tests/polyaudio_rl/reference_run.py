"""The undisturbed reference run that the exact-resume tests compare against (test_chaos.py, test_resume.py; made
once per session by the ``calm`` fixture of tests/polyaudio_rl/conftest.py): its settings, its initial adapter, and
how its rows and adapters are read.

The reference: the paper-task tiny config on the session's small data, judge-scored correctness (rule and a real HTTP
judge), GRPO from a foreign adapter (:func:`write_foreign_adapter`) for ``CALM_STEPS`` steps with a checkpoint every
2 and a constant LR. A run of the same settings that stops earlier (test_resume.py's 2 steps) is the reference's
first steps: the same rows, and the reference's step-2 checkpoint is its final adapter.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_CPU = ROOT / "configs" / "tiny_cpu.yaml"
CALM_STEPS = 6


def judge_helper():
    path = ROOT / "tests" / "rewards" / "judge_server_helper.py"
    spec = importlib.util.spec_from_file_location("judge_server_helper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_overrides(tiny_ckpt: str, data: Path, judge_url: str, **extra) -> list[str]:
    """The reference's settings as ``key=value`` overrides of configs/tiny_cpu.yaml; ``extra`` adds or replaces."""
    base = {
        "model.path": tiny_ckpt, "data.train_dir": str(data / "train"), "data.pref_dir": str(data / "pref"),
        "data.bench_dir": str(data / "bench"), "data.build_if_missing": "false", "data.max_clips": "3",
        "grpo.steps": CALM_STEPS, "grpo.prompts_per_step": 3, "grpo.group_size": 2, "eval.max_items": 1,
        "learner.num_workers": 1, "learner.checkpoint_every": 2, "rollout.max_new_tokens": 8,
        "rollout.temperature": 1.0, "ray_num_cpus": 6, "wandb_mode": "disabled",
        "grpo.lr": 2e-3,  # large enough that the adapter moves well beyond the comparisons' 1e-4 tolerance
        # correctness = mean of the rule and the judge (a real HTTP judge that grades against the reference)
        "reward.correctness_mode": "both", "reward.judge.base_url": judge_url, "reward.judge.model": "reference",
        "reward.judge.structured_output": "none", "reward.judge.cache_size": 0,
        # retry budget 0.5+1+2+4+8+8+8+8+8+8 = 55.5 s (jitter ±25%: > 41 s) covers test_chaos.py's 30 s outage
        "reward.judge.max_retries": 10, "reward.judge.backoff_s": 0.5, "reward.judge.max_backoff_s": 8,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def write_foreign_adapter(tiny_ckpt: str, config: Path, out: Path) -> Path:
    """A learner checkpoint (adapter + checksummed trainer_state.json) of the config's LoRA with B ~ N(0, 0.05),
    seed 3: an init adapter that no SFT of the runs' config (seed 0) reproduces, so equality with the reference
    cannot come from SFT reproducing the same adapter."""
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
                      "meta": {"made_by": "tests/polyaudio_rl/conftest.py"}})
    return out


def grpo_rows(run_dir: Path) -> dict[int, dict]:
    """A run's GRPO metrics rows by step (the last row of a step, should there be more)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r.get("phase") == "grpo"}


def adapter_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The LoRA weights of a run's GRPO checkpoint at ``step``."""
    return load_file(str(run_dir / "grpo" / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)
