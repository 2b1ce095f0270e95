"""Which config a ``python -m polyaudio_rl.train`` run without ``--config`` reads (:func:`train.demo_config`):
``configs/demo_<family>.yaml`` when ``model.path`` is a checkpoint of a family that has one, else ``configs/demo.yaml``;
and what a family file may change."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from polyaudio_rl import train
from polyaudio_rl.core.config import load_config, to_dict
from polyaudio_rl.core.models import DEFAULT_FAMILY, family_names, get_family

CONFIGS = Path(train.DEFAULT_CONFIG).parent
FAMILY_FILES = sorted(CONFIGS.glob("demo_*.yaml"))


@pytest.fixture
def configs(tmp_path):
    """The demo's files and one family file (voxtral's) in a directory of their own."""
    d = tmp_path / "configs"
    d.mkdir()
    for name in ("demo.yaml", "tiny_cpu.yaml"):
        shutil.copy(CONFIGS / name, d / name)
    (d / "demo_voxtral.yaml").write_text("include: demo.yaml\nmodel: {path: artifacts/tiny-voxtral, "
                                         "tiny_family: voxtral}\nsft: {epochs: 4}\n")
    return d / "demo.yaml"


def checkpoint(tmp_path: Path, family: str) -> str:
    """A directory whose config.json names ``family`` (all the family lookup reads)."""
    d = tmp_path / family
    d.mkdir()
    fam = get_family(family)
    (d / "config.json").write_text(json.dumps({"model_type": fam.model_types[0],
                                               "architectures": list(fam.architectures)}))
    return str(d)


@pytest.mark.parametrize("family, expected", [
    ("voxtral", "demo_voxtral.yaml"),        # a family with a file of its own
    ("qwen2_5_omni", "demo.yaml"),           # a family without one: the demo
    ("qwen2_audio", "demo.yaml"),            # the default family
])
def test_a_checkpoint_picks_its_family_demo_file(tmp_path, configs, family, expected):
    assert train.demo_config([f"model.path={checkpoint(tmp_path, family)}"], configs).name == expected


def test_no_model_path_is_the_demo(configs):
    assert train.demo_config([], configs) == configs
    assert train.demo_config(["seed=1"], configs) == configs
    assert train.demo_config([]) == train.DEFAULT_CONFIG


def test_a_tiny_checkpoint_still_to_write_picks_its_tiny_family(tmp_path, configs):
    missing = tmp_path / "not-yet"
    assert train.demo_config([f"model.path={missing}", "model.tiny_family=voxtral"], configs).name == "demo_voxtral.yaml"
    assert train.demo_config([f"model.path={missing}", "model.tiny_family=voxtral",
                              "model.make_tiny_if_missing=false"], configs) == configs


def test_every_family_file_includes_the_demo_and_names_its_family_and_tiny_checkpoint():
    for path in FAMILY_FILES:
        family = path.stem.removeprefix("demo_")
        assert family in family_names() and family != DEFAULT_FAMILY, path.name
        assert yaml.safe_load(path.read_text())["include"] == "demo.yaml", path.name
        cfg = load_config(path)
        assert cfg.model.tiny_family == family and cfg.model.path == f"artifacts/tiny-{family}", path.name


def test_family_files_change_only_how_the_demo_trains():
    """A family file may change SFT and GRPO settings, never the data, the evaluation or the rewards: the figures per
    family stay comparable with the default family's."""
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
