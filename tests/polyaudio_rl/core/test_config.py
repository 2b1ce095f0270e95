import dataclasses
from pathlib import Path

import pytest

from polyaudio_rl.core.config import Config, ConfigError, describe, load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_default_config_loads_from_tiny_cpu_yaml():
    cfg = load_config()
    assert cfg.model.path == "artifacts/tiny-qwen2-audio"
    assert cfg.grpo.group_size == 4  # tiny_cpu.yaml overrides the dataclass default of 8
    assert cfg.rollout.engine == "vllm"


def test_dotted_overrides_set_typed_values():
    cfg = load_config(overrides=["grpo.group_size=8", "grpo.lr=1e-4", "model.lora.rank=4", "data.tasks=[counting, odd_one_out]"])
    assert cfg.grpo.group_size == 8
    assert cfg.grpo.lr == pytest.approx(1e-4)
    assert cfg.model.lora.rank == 4
    assert cfg.data.tasks == ["counting", "odd_one_out"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.group_szie=8", "unknown config key 'grpo.group_szie' (did you mean 'group_size'?)"),
        ("grop.group_size=8", "unknown config key 'grop' (did you mean 'grpo'?)"),
        ("grpo.group_size=eight", "grpo.group_size: expected int, got 'eight'"),
        ("model.lora.rank=2.5", "model.lora.rank: expected int, got 2.5"),
        ("rollout.enforce_eager=maybe", "rollout.enforce_eager: expected bool"),
        ("grpo.group_size", "must look like section.key=value"),
        ("rollout.engine=tensorrt", "rollout.engine must be 'vllm' or 'hf'"),
        ("grpo.lr_schedule=step", "grpo.lr_schedule must be constant, linear or cosine, got 'step'"),
        ("data.balance_answers=true", "data.balance_answers needs data.interleave_tasks: true"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: %s\nrollout:\n  max_new_tokns: 4\n" % (CONFIGS / "tiny_cpu.yaml"))
    with pytest.raises(ConfigError, match=r"rollout\.max_new_tokns.*max_new_tokens"):
        load_config(bad)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_has_help_text():
    missing = [key for key, _t, _d, help_text in describe(Config) if len(help_text) < 10]
    assert missing == []


def test_every_yaml_in_configs_loads():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert any(f.name == "qwen2_audio_7b_8xa100.yaml" for f in files)
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, Config), f


def test_production_config_describes_eight_gpus():
    cfg = load_config(CONFIGS / "qwen2_audio_7b_8xa100.yaml")
    gpus = cfg.rollout.num_actors * max(cfg.rollout.gpus_per_actor, 1) + cfg.learner.num_workers
    assert cfg.learner.use_gpu and gpus == 8
    assert cfg.model.dtype == "bfloat16"


def test_sections_are_independent_instances():
    a, b = Config(), Config()
    a.reward.weights["format"] = 0.0
    assert b.reward.weights["format"] != 0.0
    assert dataclasses.is_dataclass(a.model.lora) and a.model.lora is not b.model.lora
