"""The data a run builds is seeded by ``data.seed``, not the run's ``seed``: runs of different seeds share the data."""
import pytest

from polyaudio_rl.core.config import load_config
from polyaudio_rl.data_setup import datagen_config


@pytest.mark.parametrize("overrides, want_seed", [
    ([], 0),                              # the default
    (["seed=1"], 0),                      # another training seed: the same data
    (["seed=3", "data.seed=5"], 5),       # the data seed is its own knob
    (["data.seed=2"], 2),
])
def test_datagen_config_takes_the_data_seed(overrides, want_seed):
    cfg = load_config("configs/demo.yaml", overrides)
    dcfg = datagen_config(cfg)
    assert dcfg.seed == want_seed
    assert dcfg.preset == "starter" and dcfg.max_clips == 3
