"""Audio in one place: decode clip bytes or files, mix to mono, resample to 16 kHz, validate.

A Whisper-style audio front end pads or truncates every clip to a 30 s window, silently. We never rely on
that: a clip over the limit, an empty clip, NaN/inf samples, an unreadable file or an unknown sample rate is a
:class:`AudioError` naming the sample and the clip.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

TARGET_SR = 16000


class AudioError(ValueError):
    """A clip cannot be used; the message names the sample id and the 1-based clip index."""


def _where(sample_id: str, clip: int | None) -> str:
    return f"sample {sample_id}" + (f", clip {clip}" if clip is not None else "")


def decode(data: bytes | str | Path, sample_id: str = "?", clip: int | None = None) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG bytes or a file path into (float32 array [frames] or [frames, ch], sample_rate)."""
    where = _where(sample_id, clip)
    try:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise AudioError(f"{where}: audio file not found: {path}")
            wave, sr = sf.read(str(path), dtype="float32", always_2d=False)
        else:
            if not data:
                raise AudioError(f"{where}: audio bytes are empty")
            wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{where}: unreadable audio ({exc})") from exc
    return np.asarray(wave, dtype=np.float32), int(sr)


def to_mono_16k(wave: np.ndarray, sr: int | None, sample_id: str = "?", clip: int | None = None) -> np.ndarray:
    """Mix down to mono and resample to 16 kHz (polyphase, exact rational ratio)."""
    where = _where(sample_id, clip)
    if sr is None or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"{where}: unknown sample rate {sr!r}; give the clip's sample rate")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    elif wave.ndim != 1:
        raise AudioError(f"{where}: audio must be 1-D (mono) or 2-D (frames, channels), got shape {wave.shape}")
    if sr != TARGET_SR:
        ratio = Fraction(TARGET_SR, int(sr)).limit_denominator(1000)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return wave


def validate(wave: np.ndarray, sample_id: str = "?", clip: int | None = None, max_seconds: float = 30.0) -> None:
    """Reject empty, non-finite or over-long 16 kHz mono clips."""
    where = _where(sample_id, clip)
    if wave.size == 0:
        raise AudioError(f"{where}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wave)):
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        raise AudioError(f"{where}: audio has {bad} NaN/inf samples")
    seconds = wave.shape[0] / TARGET_SR
    if seconds > max_seconds + 1e-6:
        raise AudioError(
            f"{where}: clip lasts {seconds:.2f} s, over the {max_seconds:g} s limit "
            "(the audio front end would silently truncate it; trim or split it first)"
        )


def load_clip(
    data: bytes | str | Path | np.ndarray,
    sample_rate: int | None = None,
    sample_id: str = "?",
    clip: int | None = None,
    max_seconds: float = 30.0,
) -> np.ndarray:
    """Any clip form (bytes, path, or array + sample_rate) → validated mono float32 at 16 kHz."""
    if isinstance(data, np.ndarray):
        wave, sr = data, sample_rate
    else:
        wave, sr = decode(data, sample_id, clip)
        if sample_rate is not None and sample_rate != sr:
            raise AudioError(
                f"{_where(sample_id, clip)}: stated sample rate {sample_rate} differs from the file's {sr}"
            )
    out = to_mono_16k(wave, sr, sample_id, clip)
    validate(out, sample_id, clip, max_seconds)
    return out


def encode_wav(wave: np.ndarray, sr: int = TARGET_SR) -> bytes:
    """float32 mono → 16-bit PCM WAV bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def encode_flac(wave: np.ndarray, sr: int = TARGET_SR) -> bytes:
    """float32 mono → 16-bit FLAC bytes (lossless, ~half the size of WAV)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
