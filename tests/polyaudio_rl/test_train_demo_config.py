"""Which config a ``python -m polyaudio_rl.train`` run without ``--config`` reads (:func:`train.demo_config`):
``configs/demo_<family>.yaml`` when ``model.path`` is a checkpoint of a family that has one, else ``configs/demo.yaml``;
and what the family files may change."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from polyaudio_rl import train
from polyaudio_rl.core.config import load_config, to_dict
from polyaudio_rl.core.models import DEFAULT_FAMILY, family_names, get_family

CONFIGS = Path(train.DEFAULT_CONFIG).parent
FAMILY_FILES = sorted(CONFIGS.glob("demo_*.yaml"))


def checkpoint(tmp_path: Path, family: str) -> str:
    """A directory whose config.json names ``family`` (all the family lookup reads)."""
    d = tmp_path / family
    d.mkdir()
    fam = get_family(family)
    (d / "config.json").write_text(json.dumps({"model_type": fam.model_types[0],
                                               "architectures": list(fam.architectures)}))
    return str(d)


@pytest.mark.parametrize("family, expected", [
    ("qwen2_audio", "demo.yaml"),            # the default family: the demo's own settings
    ("qwen2_5_omni", "demo_qwen2_5_omni.yaml"),
    ("voxtral", "demo_voxtral.yaml"),
])
def test_a_checkpoint_picks_its_family_demo_file(tmp_path, family, expected):
    assert train.demo_config([f"model.path={checkpoint(tmp_path, family)}"]).name == expected


def test_no_model_path_is_the_demo(tmp_path):
    assert train.demo_config([]) == train.DEFAULT_CONFIG
    assert train.demo_config(["seed=1"]) == train.DEFAULT_CONFIG


@pytest.mark.parametrize("tiny_family, expected", [("voxtral", "demo_voxtral.yaml"), ("qwen2_audio", "demo.yaml")])
def test_a_tiny_checkpoint_still_to_write_picks_its_tiny_family(tmp_path, tiny_family, expected):
    missing = tmp_path / "not-yet"
    assert train.demo_config([f"model.path={missing}", f"model.tiny_family={tiny_family}"]).name == expected
    assert train.demo_config([f"model.path={missing}", "model.make_tiny_if_missing=false",
                              f"model.tiny_family={tiny_family}"]) == train.DEFAULT_CONFIG


def test_every_family_file_includes_the_demo_and_names_its_family_and_tiny_checkpoint():
    assert FAMILY_FILES, "no configs/demo_<family>.yaml"
    for path in FAMILY_FILES:
        family = path.stem.removeprefix("demo_")
        assert family in family_names() and family != DEFAULT_FAMILY, path.name
        raw = yaml.safe_load(path.read_text())
        assert raw["include"] == "demo.yaml", path.name
        cfg = load_config(path)
        assert cfg.model.tiny_family == family and cfg.model.path == f"artifacts/tiny-{family}", path.name


def test_family_files_change_only_training_settings_of_the_demo():
    """A family file may change how the demo trains (sft, grpo, rollout sampling), never the data, the evaluation or
    the rewards: the per-family figures are comparable with the default family's."""
    demo = to_dict(load_config(train.DEFAULT_CONFIG))
    for path in FAMILY_FILES:
        own = to_dict(load_config(path))
        changed = {section for section in demo if own[section] != demo[section]}
        assert changed <= {"model", "sft", "grpo"}, (path.name, changed)
        assert {k for k in demo["model"] if own["model"][k] != demo["model"][k]} == {"path", "tiny_family"}


def test_the_default_family_demo_is_unchanged():
    """configs/demo.yaml is what qwen2_audio's demo figures (docs/demo.md) were measured with."""
    cfg = load_config(train.DEFAULT_CONFIG)
    assert (cfg.model.tiny_family, cfg.sft.epochs, cfg.grpo.group_size, cfg.grpo.steps) == (DEFAULT_FAMILY, 2, 8, 60)
