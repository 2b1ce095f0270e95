"""Small waveform helpers shared by the sources: read/resample/trim/normalise/encode (16 kHz mono float32)."""
from __future__ import annotations

import io
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SR = 16000


class SourceError(RuntimeError):
    """An audio source failed for one item (missing/unreadable file, engine failure). The item is skipped and
    counted under ``reason`` in the build report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def to_mono(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x


def resample(x: np.ndarray, sr_in: int, sr_out: int = SR) -> np.ndarray:
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def read_audio(path: str, sr: int = SR) -> np.ndarray:
    """Any libsndfile-readable file (wav, flac, ogg) -> mono float32 at ``sr``. Raises SourceError naming the file."""
    try:
        x, fsr = sf.read(path, dtype="float32", always_2d=False)
    except FileNotFoundError as exc:
        raise SourceError("missing source file", str(path)) from exc
    except Exception as exc:  # libsndfile's errors are RuntimeError / LibsndfileError
        if not __import__("os").path.exists(path):
            raise SourceError("missing source file", str(path)) from exc
        raise SourceError("unreadable source file", f"{path}: {exc}") from exc
    x = to_mono(x)
    if x.size == 0 or not np.isfinite(x).all():
        raise SourceError("unreadable source file", f"{path}: empty or non-finite audio")
    return resample(x, fsr, sr)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return to_mono(x), int(sr)


def encode(x: np.ndarray, sr: int = SR, fmt: str = "flac") -> bytes:
    buf = io.BytesIO()
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, y, sr, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to 16-bit PCM exactly as ``encode`` stores it, so in-memory audio equals decoded audio."""
    return (np.round(np.clip(x, -1.0, 1.0) * 32767.0) / 32767.0).astype(np.float32)


def trim(x: np.ndarray, threshold_db: float = -40.0, pad: int = 0) -> np.ndarray:
    """Cut leading/trailing parts quieter than ``threshold_db`` relative to the peak (10 ms frames)."""
    if x.size == 0:
        return x
    peak = float(np.max(np.abs(x)))
    if peak <= 0:
        return x[:0]
    thr = peak * 10 ** (threshold_db / 20)
    idx = np.nonzero(np.abs(x) > thr)[0]
    a, b = max(0, int(idx[0]) - pad), min(x.size, int(idx[-1]) + 1 + pad)
    return x[a:b]


def normalize(x: np.ndarray, peak_db: float = -3.0) -> np.ndarray:
    p = float(np.max(np.abs(x))) if x.size else 0.0
    if p <= 0:
        return x.astype(np.float32)
    return (x * (10 ** (peak_db / 20) / p)).astype(np.float32)


def fade(x: np.ndarray, ms: float = 10.0, sr: int = SR) -> np.ndarray:
    n = min(int(sr * ms / 1000), x.size // 2)
    if n <= 0:
        return x
    y = x.copy()
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(round(seconds * sr)), dtype=np.float32)


def concat(parts: list[np.ndarray], gap_s: float = 0.4, sr: int = SR) -> np.ndarray:
    out: list[np.ndarray] = []
    for i, p in enumerate(parts):
        if i:
            out.append(silence(gap_s, sr))
        out.append(p)
    return np.concatenate(out) if out else np.zeros(0, np.float32)
