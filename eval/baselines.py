"""Baseline protocols (paper §4.1.2): how the clips of one item reach a model with fewer audio inputs.

native  one audio part per clip, in order (PolyAudio, the instruct checkpoints of every family).
concat  models without multi-audio input (Gemini 2.5 Pro, Audio Flamingo 3; the MMAU-Pro protocol): every clip
        joined, in order, into ONE audio with ``silence_s`` (2 s) of silence between consecutive clips.
pair    2-audio models (ADIFF, Mellow): clip 1 stays the first audio; clips 2..n are joined with 2 s of silence
        into the second (last) audio. With n <= 2 nothing changes.

Clips are 16 kHz mono float32 (``polyaudio_rl.core.audio.load_clip``). A joined audio can exceed an endpoint's per-clip
limit (our policy endpoint: 30 s); such a request is refused by that endpoint and the item is reported failed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from polyaudio_rl.core.audio import TARGET_SR

PROTOCOLS = ("native", "concat", "pair")


def join_clips(waves: Sequence[np.ndarray], silence_s: float = 2.0, sr: int = TARGET_SR) -> np.ndarray:
    """Clips in order with ``silence_s`` seconds of zeros between consecutive ones (none before or after)."""
    if not waves:
        raise ValueError("join_clips: no clips")
    gap = np.zeros(int(round(silence_s * sr)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, w in enumerate(waves):
        if i:
            parts.append(gap)
        parts.append(np.asarray(w, dtype=np.float32))
    return np.concatenate(parts)


def apply_protocol(waves: Sequence[np.ndarray], protocol: str, silence_s: float = 2.0) -> list[np.ndarray]:
    """The audio inputs a model gets under ``protocol`` for these clips."""
    if protocol == "native":
        return [np.asarray(w, dtype=np.float32) for w in waves]
    if protocol == "concat":
        return [join_clips(waves, silence_s)]
    if protocol == "pair":
        if len(waves) <= 2:
            return [np.asarray(w, dtype=np.float32) for w in waves]
        return [np.asarray(waves[0], dtype=np.float32), join_clips(waves[1:], silence_s)]
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def protocol_hint(n_clips: int, protocol: str, silence_s: float = 2.0) -> str:
    """One sentence telling the model how the clips were laid out (empty for native or when nothing was joined)."""
    gap = f"{silence_s:g} seconds of silence"
    if protocol == "concat" and n_clips > 1:
        return (f"The {n_clips} audio clips (Audio 1 to Audio {n_clips}) are given as one recording, in order, "
                f"separated by {gap}.")
    if protocol == "pair" and n_clips > 2:
        return (f"The first recording is Audio 1. The second recording holds Audio 2 to Audio {n_clips} in order, "
                f"separated by {gap}.")
    return ""
