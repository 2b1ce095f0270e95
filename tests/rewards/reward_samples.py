"""Hand-made samples for the reward tests (rewards never read audio; the clips are tiny real WAV files).

Loaded by path from the test modules (pytest runs with --import-mode=importlib, no packages under tests/)."""
from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from polyaudio_rl.core.schema import Clip, Sample


def wav_bytes(freq: float, seconds: float = 0.05, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_sample(task: str, key: dict, n_clips: int = 4, question: str = "Which clip?", answer: str = "",
                relevant=None, choices=None, sid: str | None = None, freqs=None) -> Sample:
    freqs = freqs or [220.0 * (i + 1) for i in range(n_clips)]
    clips = [Clip(wav_bytes(f), 16000, 0.05, f"tone-{f:g}", "CC0") for f in freqs]
    s = Sample(
        id=sid or f"test-{task}-0", task=task, split="pref", clips=clips, question=question,
        answer=answer or "reference answer", key=key,
        relevant_clips=list(relevant) if relevant is not None else list(range(1, n_clips + 1)),
        choices=list(choices or []),
    )
    s.validate()
    return s

