"""Speech: a roster of distinct speakers over pluggable TTS engines.

Engines: ``espeak-ng`` and ``flite`` (local, deterministic: the same text and voice give the same samples, which
the tests use to check that a clip was spoken by the voice its metadata names) and ``openai`` (any
OpenAI-compatible ``/v1/audio/speech`` server: the paper's voices alloy ... shimmer with the Voice / Tone /
Punctuation / Delivery instructions of Figure 7) for production.

Bench speakers are held out: per engine and gender, the ``ceil(holdout * n)`` speakers with the smallest stable hash go to
bench, the rest to train/pref (see :func:`split_roster`).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from ..audio import SR, SourceError, normalize, resample, to_mono, trim


class EngineMissing(RuntimeError):
    """A configured engine is not installed: raised at build start, names the engine and how to install it."""


@dataclass(frozen=True)
class Speaker:
    id: str            # stable id, e.g. "espeak-ng:en-gb-scotland+m7:p35"
    engine: str        # espeak-ng | flite | openai
    voice: str         # engine voice name
    gender: str        # male | female
    accent: str        # human description, e.g. "Scottish English"
    pitch: int = 50    # espeak-ng pitch (0-99)
    speed: int = 160   # espeak-ng words per minute
    licence: str = ""


# (voice, gender, accent, pitch, speed): chosen to differ in accent, gender, pitch and timbre.
ESPEAK_VOICES = [
    ("en-us+m3", "male", "American English", 38, 155),
    ("en-us+f3", "female", "American English", 72, 165),
    ("en-gb+m1", "male", "British English", 48, 160),
    ("en-gb+f2", "female", "British English", 66, 150),
    ("en-gb-scotland+m7", "male", "Scottish English", 30, 150),
    ("en-gb-scotland+f4", "female", "Scottish English", 75, 160),
    ("en-029+m2", "male", "Caribbean English", 55, 145),
    ("en-029+f5", "female", "Caribbean English", 80, 155),
    ("en-gb-x-rp+m4", "male", "Received Pronunciation", 42, 170),
    ("en-gb-x-gbclan+f1", "female", "Lancashire English", 62, 165),
    ("en-gb-x-gbcwmd+m6", "male", "West Midlands English", 52, 150),
    ("en-us+klatt4", "male", "American English (formant synthesis)", 60, 150),
]
FLITE_VOICES = [
    ("slt", "female", "American English"),
    ("rms", "male", "American English"),
    ("awb", "male", "Scottish English"),
    ("kal16", "male", "American English (diphone)"),
]
# The paper's speaker whitelist (Figure 7); genders as commonly described, used only for pronouns.
OPENAI_VOICES = {
    "alloy": "female", "ash": "male", "ballad": "male", "coral": "female", "echo": "male",
    "fable": "male", "nova": "female", "onyx": "male", "sage": "female", "shimmer": "female",
}
INSTALL_HINT = {
    "espeak-ng": "apt-get install espeak-ng (listed in scripts/setup_venv.sh APT_PKGS)",
    "flite": "apt-get install flite (listed in scripts/setup_venv.sh APT_PKGS)",
    "openai": "set datagen.openai_tts.base_url to an OpenAI-compatible server exposing /v1/audio/speech",
}


def stable_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def roster(cfg) -> list[Speaker]:
    """All speakers of the configured engines."""
    out: list[Speaker] = []
    for eng in cfg.speech_engines:
        if eng == "espeak-ng":
            out += [Speaker(f"espeak-ng:{v}:p{p}", "espeak-ng", v, g, a, p, s, "GPL-3.0 (espeak-ng)")
                    for v, g, a, p, s in ESPEAK_VOICES]
        elif eng == "flite":
            out += [Speaker(f"flite:{v}", "flite", v, g, a, licence="BSD-like (CMU flite)") for v, g, a in FLITE_VOICES]
        elif eng == "openai":
            out += [Speaker(f"openai:{v}", "openai", v, g, "neural voice", licence="per TTS provider terms")
                    for v, g in OPENAI_VOICES.items() if v in cfg.openai_tts.voices]
    return out


def split_roster(speakers: list[Speaker], holdout: float) -> dict[str, list[Speaker]]:
    """{"bench": [...], "train": [...]} disjoint: per (engine, gender) group of two or more, the ceil(holdout*n)
    speakers with the smallest stable hash go to bench, the rest to train/pref."""
    bench, train = [], []
    for eng, gender in sorted({(s.engine, s.gender) for s in speakers}):
        group = sorted((s for s in speakers if s.engine == eng and s.gender == gender),
                       key=lambda s: stable_hash("speaker", s.id))
        k = max(1, math.ceil(holdout * len(group))) if len(group) > 1 else 0
        bench += group[:k]
        train += group[k:]
    if not bench:  # a single engine with a single voice: nothing to hold out
        bench = list(train)
    return {"bench": bench, "train": train, "pref": train}


def check_engines(cfg) -> None:
    """Raise EngineMissing naming the engine and how to install it, for each configured engine that is absent."""
    for eng in cfg.speech_engines:
        if eng == "espeak-ng" and not shutil.which(cfg.espeak_binary):
            raise EngineMissing(f"speech engine 'espeak-ng' not found (executable {cfg.espeak_binary!r}): "
                                f"install it with `{INSTALL_HINT['espeak-ng']}`")
        if eng == "flite" and not shutil.which(cfg.flite_binary):
            raise EngineMissing(f"speech engine 'flite' not found (executable {cfg.flite_binary!r}): "
                                f"install it with `{INSTALL_HINT['flite']}`")
        if eng == "openai" and not cfg.openai_tts.base_url:
            raise EngineMissing(f"speech engine 'openai' has no base URL: {INSTALL_HINT['openai']}")


# Figure 7: a TTS instructions block with exactly these labelled lines.
_STYLE = {
    "Voice": ["Warm and steady", "Bright and clear", "Low and calm", "Crisp and confident", "Soft and friendly"],
    "Tone": ["Matter-of-fact", "Cheerful", "Reassuring", "Serious", "Curious"],
    "Punctuation": ["Short pauses at commas", "Clear stops at periods", "Light pauses between clauses"],
    "Delivery": ["Moderate pace, even volume", "Unhurried, well articulated", "Brisk but clear"],
}


def tts_instructions(rng) -> str:
    return "\n\n".join(f"{k}: {rng.choice(v)}" for k, v in _STYLE.items())


@dataclass
class SpeechSynth:
    """Render text with a speaker; 16 kHz mono float32, leading/trailing silence trimmed."""

    espeak_binary: str = "espeak-ng"
    flite_binary: str = "flite"
    openai_base_url: str = ""
    openai_model: str = "gpt-4o-mini-tts"
    openai_api_key: str = "none"
    openai_timeout_s: float = 60.0
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg) -> "SpeechSynth":
        return cls(cfg.espeak_binary, cfg.flite_binary, cfg.openai_tts.base_url, cfg.openai_tts.model,
                   os.environ.get(cfg.openai_tts.api_key_env, "none"), cfg.openai_tts.timeout_s)

    def say(self, speaker: Speaker, text: str, instructions: str = "") -> np.ndarray:
        key = (speaker.id, text, instructions)
        if key in self._cache:
            return self._cache[key]
        if speaker.engine == "espeak-ng":
            x = self._espeak(speaker, text)
        elif speaker.engine == "flite":
            x = self._flite(speaker, text)
        elif speaker.engine == "openai":
            x = self._openai(speaker, text, instructions)
        else:
            raise SourceError("speech engine failed", f"unknown engine {speaker.engine!r}")
        x = normalize(trim(x, -45.0, pad=int(0.05 * SR)), -3.0)  # same level for every engine, no clipping
        if x.size < int(0.2 * SR):
            raise SourceError("speech engine failed", f"{speaker.engine} voice {speaker.voice}: no audio for {text!r}")
        if len(self._cache) > 512:
            self._cache.clear()
        self._cache[key] = x
        return x

    def _run(self, speaker: Speaker, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(argv, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError("speech engine failed", f"{speaker.engine} voice {speaker.voice}: {exc}") from exc
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()[:200]
            raise SourceError("speech engine failed",
                              f"{speaker.engine} voice {speaker.voice}: exit {res.returncode}: {err}")
        return res

    def _espeak(self, sp: Speaker, text: str) -> np.ndarray:
        res = self._run(sp, [self.espeak_binary, "-v", sp.voice, "-p", str(sp.pitch), "-s", str(sp.speed),
                             "--stdout", text])
        return self._decode(sp, res.stdout)

    def _flite(self, sp: Speaker, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="datagen-flite-") as d:
            out = os.path.join(d, "x.wav")
            self._run(sp, [self.flite_binary, "-voice", sp.voice, "-t", text, "-o", out])
            if not os.path.exists(out):
                raise SourceError("speech engine failed", f"flite voice {sp.voice}: wrote no audio")
            with open(out, "rb") as fh:
                return self._decode(sp, fh.read())

    def _openai(self, sp: Speaker, text: str, instructions: str) -> np.ndarray:
        if not self.openai_base_url:
            raise SourceError("speech engine failed", "openai TTS has no base_url")
        import httpx

        body = {"model": self.openai_model, "voice": sp.voice, "input": text, "response_format": "wav"}
        if instructions:
            body["instructions"] = instructions
        url = self.openai_base_url.rstrip("/") + "/audio/speech"
        try:
            r = httpx.post(url, json=body, timeout=self.openai_timeout_s,
                           headers={"Authorization": f"Bearer {self.openai_api_key}"})
        except httpx.HTTPError as exc:
            raise SourceError("speech engine failed", f"openai voice {sp.voice}: {exc}") from exc
        if r.status_code != 200:
            raise SourceError("speech engine failed", f"openai voice {sp.voice}: HTTP {r.status_code} {r.text[:120]}")
        return self._decode(sp, r.content)

    @staticmethod
    def _decode(sp: Speaker, data: bytes) -> np.ndarray:
        try:
            x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        except Exception as exc:
            raise SourceError("speech engine failed", f"{sp.engine} voice {sp.voice}: bad audio: {exc}") from exc
        return resample(to_mono(x), int(sr), SR)
