"""One short end-to-end run per model family beyond the default one (whose run is tests/polyaudio_rl/test_demo.py):
`python -m polyaudio_rl.train model.path=<tiny of F>` (no --config: configs/demo_F.yaml where the family has one, the
family read from the checkpoint alone) with the demo's stages and settings (SFT, GRPO at policy lag 1 with TIS, held-out evaluation, serve +
bench) on a smaller scale (2 SFT steps, 2 GRPO steps of 3 prompts x 4, 8 held-out items) ends rc 0 with summary.json
and the served-adapter bench (stage 4); step 2 trains on rollouts sampled one policy version behind (lag 1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyaudio_rl import train
from polyaudio_rl.core.config import load_config
from polyaudio_rl.core.models import DEFAULT_FAMILY, family_names
from tests.conftest import build_splits

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def starter_data(tmp_path_factory):
    cfg = load_config(str(DEMO), [])  # a few items per task: the run is a plumbing check, not a learning one
    return build_splits(tmp_path_factory.mktemp("starter"), {"train": 16, "pref": 8, "bench": 8}, [],
                        max_clips=cfg.data.max_clips, curriculum="starter")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("family", [f for f in family_names() if f != DEFAULT_FAMILY])
def test_short_demo_run_with_serve_bench(family, tiny_ckpt_of, starter_data, tmp_path):
    d, run = starter_data, tmp_path / "run"
    rc = train.main(["--run-dir", str(run), "--quiet", f"model.path={tiny_ckpt_of(family)}",
                     f"data.train_dir={d / 'train'}", f"data.pref_dir={d / 'pref'}", f"data.bench_dir={d / 'bench'}",
                     "data.build_if_missing=false", "wandb_mode=disabled", "grpo.steps=2",
                     "grpo.prompts_per_step=3", "grpo.group_size=4", "sft.max_steps=2", "eval.max_items=8"])
    assert rc == 0
    own = train.demo_config([f"model.path={tiny_ckpt_of(family)}"]).name  # demo_<family>.yaml where there is one
    assert json.loads((run / "run.json").read_text())["config_name"] == f"configs/{own}"
    s = json.loads((run / "summary.json").read_text())
    assert s["eval_after"]["n"] == 8
    bench = s["bench"]
    assert bench["overall"]["scored"] >= 8 and bench["overall"]["failed"] == 0
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    assert [r["policy_lag/max"] for r in grpo] == [0.0, 1.0]  # step 2 trained on rollouts of the version before
