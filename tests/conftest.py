"""Shared fixtures: the tiny offline checkpoints (one per model family) and small synthetic multi-audio samples."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# vLLM in the test process (no engine-core subprocess); no telemetry, no hub.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> str:
    """Path of the default family's tiny random checkpoint (seed 0), written once per test session."""
    from polyaudio_rl.core.tiny import write_tiny

    return str(write_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2-audio", seed=0))


@pytest.fixture(scope="session")
def tiny_ckpt_of(tmp_path_factory, tiny_ckpt):
    """``tiny_ckpt_of(family)``: the path of that family's tiny random checkpoint (seed 0), written once per session."""
    from polyaudio_rl.core.models import DEFAULT_FAMILY
    from polyaudio_rl.core.tiny import write_tiny

    made = {DEFAULT_FAMILY: tiny_ckpt}

    def get(family: str) -> str:
        if family not in made:
            made[family] = str(write_tiny(tmp_path_factory.mktemp("ckpt") / f"tiny-{family}", seed=0, family=family))
        return made[family]

    return get


@pytest.fixture(scope="session")
def tiny_processor(tiny_ckpt):
    from polyaudio_rl.core.model import load_processor

    return load_processor(tiny_ckpt)


def tone(seconds: float, freq: float = 440.0, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_sample(sample_id: str = "t-0", durations=(1.0, 2.0, 1.5), sr: int = 16000, question: str = "Which clip is the loudest?"):
    """A schema-valid Sample whose clips are FLAC-encoded tones of the given durations."""
    from polyaudio_rl.core.schema import Clip, Sample
    from polyaudio_rl.core.audio import encode_flac

    clips = [
        Clip(audio=encode_flac(tone(d, 220.0 * (i + 1), sr), sr), sample_rate=sr, duration=d, source_id=f"tone{i}", licence="CC0")
        for i, d in enumerate(durations)
    ]
    return Sample(
        id=sample_id, task="comparison", split="train", clips=clips, question=question, answer="Audio 1.",
        key={"type": "clip", "value": 1}, relevant_clips=[1],
    )


@pytest.fixture(scope="session")
def sample_factory():
    return make_sample


def build_splits(d, sizes: dict[str, int], tasks: list[str], max_clips: int = 3, **kw):
    """Build the given splits (``{"train": 4, ...}`` items per task) of the ci preset into ``d/<split>``; returns ``d``."""
    from datagen.build import build_split

    for split, n in sizes.items():
        build_split(split, str(d / split), preset="ci", seed=0, workers=2, progress=False, tasks=tasks,
                    max_clips=max_clips, items_per_task={split: n}, **kw)
    return d


@pytest.fixture(scope="session")
def small_task_data(tmp_path_factory):
    """The small end-to-end runs' data (test_train, test_chaos, test_resume), built once per session and only read:
    the paper tasks odd_one_out and counting, 4 / 6 / 2 items per task (train / pref / bench), at most 3 clips."""
    return build_splits(tmp_path_factory.mktemp("small-task-data"), {"train": 4, "pref": 6, "bench": 2},
                        ["odd_one_out", "counting"])
