"""Sound events: real recorded clips from Debian packages, labelled, mixed onto a quiet background at known onsets.

Every placed event has an exact start/end (the onset we chose, plus the trimmed length of the file) and a label,
PicoAudio-style, so counts and intervals in the ground truth are exact. Files are held out for bench per label:
of a label's files sorted by a stable hash of their path, ``ceil(holdout*n)`` go to bench and the rest to
train/pref; a label with a single file goes wholly to one side (by a stable hash of the label).
"""
from __future__ import annotations

import glob
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from ..audio import SR, SourceError, fade, normalize, read_audio, trim
from .speech import stable_hash

MAX_EVENT_S = 4.0

# Desktop theme sound names (freedesktop, Yaru, Oxygen) -> (label, category).
_THEME = {
    "bell": ("bell ding", "alert"),
    "phone-incoming-call": ("phone ringing", "alert"), "oxygen-im-phone-ring": ("phone ringing", "alert"),
    "phone-outgoing-busy": ("busy signal", "alert"),
    "alarm-clock-elapsed": ("alarm clock", "alert"),
    "camera-shutter": ("camera shutter", "household"),
    "trash-empty": ("trash being emptied", "household"), "oxygen-sys-trash-emptied": ("trash being emptied", "household"),
    "message": ("message chime", "alert"), "message-new-instant": ("message chime", "alert"),
    "message-new-email": ("message chime", "alert"), "oxygen-im-message-in": ("message chime", "alert"),
    "oxygen-im-sms": ("message chime", "alert"), "oxygen-im-new-mail": ("message chime", "alert"),
    "complete": ("completion chime", "alert"), "system-ready": ("completion chime", "alert"),
    "oxygen-k3b-finish-success": ("completion chime", "alert"),
    "dialog-warning": ("warning tone", "alert"), "dialog-error": ("warning tone", "alert"),
    "oxygen-sys-warning": ("warning tone", "alert"), "oxygen-sys-app-error": ("warning tone", "alert"),
    "oxygen-sys-app-error-critical": ("warning tone", "alert"), "suspend-error": ("warning tone", "alert"),
    "device-added": ("device connect tone", "alert"), "device-removed": ("device connect tone", "alert"),
    "power-plug": ("device connect tone", "alert"), "power-unplug": ("device connect tone", "alert"),
    "service-login": ("login jingle", "alert"), "desktop-login": ("login jingle", "alert"),
    "oxygen-sys-log-in": ("login jingle", "alert"), "oxygen-sys-log-in-short": ("login jingle", "alert"),
    "service-logout": ("logout jingle", "alert"), "desktop-logoff": ("logout jingle", "alert"),
    "oxygen-sys-log-out": ("logout jingle", "alert"),
    "dialog-question": ("question tone", "alert"), "oxygen-sys-question": ("question tone", "alert"),
    "battery-low": ("low battery beep", "alert"),
    "audio-volume-change": ("volume click", "household"),
    "oxygen-window-close": ("window whoosh", "household"), "oxygen-window-minimize": ("window whoosh", "household"),
    "oxygen-window-maximize": ("window whoosh", "household"),
}
# Hydrogen drumkit instrument names -> (label, category); first match wins.
_DRUMS = [
    (r"clap", "hand clap"), (r"snap", "finger snap"), (r"cowbell", "cowbell"), (r"tambourine", "tambourine"),
    (r"maraca", "maraca shake"), (r"woodblock", "woodblock"), (r"clave", "claves"), (r"bongo", "bongo"),
    (r"conga", "conga"), (r"djembe", "djembe"), (r"cajon", "cajon"), (r"waterglass", "glass clink"),
    (r"whistle", "whistle"), (r"kick|bass ?drum|bassdrum", "kick drum"), (r"snare", "snare drum"),
    (r"crash|splash", "crash cymbal"), (r"ride", "ride cymbal"), (r"h(i-?)? ?h(at)?\b|hat", "hi-hat"),
    (r"\btom|tom\b|tom ", "tom drum"),
]
PHRASES = {  # natural phrases for questions/answers
    "bell ding": "a bell ding", "phone ringing": "a phone ringing", "busy signal": "a telephone busy signal",
    "alarm clock": "an alarm clock", "camera shutter": "a camera shutter click",
    "trash being emptied": "trash being emptied", "message chime": "a message chime",
    "completion chime": "a completion chime", "warning tone": "a warning tone",
    "device connect tone": "a device connection tone", "login jingle": "a login jingle",
    "logout jingle": "a logout jingle", "question tone": "a question tone", "low battery beep": "a low battery beep",
    "volume click": "a volume click", "window whoosh": "a window whoosh", "keyboard key press": "a keyboard key press",
    "hand clap": "a hand clap", "finger snap": "a finger snap", "cowbell": "a cowbell hit",
    "tambourine": "a tambourine hit", "maraca shake": "a maraca shake", "woodblock": "a woodblock knock",
    "claves": "a claves click", "bongo": "a bongo hit", "conga": "a conga hit", "djembe": "a djembe hit",
    "cajon": "a cajon hit", "glass clink": "a glass clink", "whistle": "a whistle", "kick drum": "a kick drum hit",
    "snare drum": "a snare drum hit", "crash cymbal": "a crash cymbal", "ride cymbal": "a ride cymbal hit",
    "hi-hat": "a hi-hat hit", "tom drum": "a tom drum hit",
}
PLURALS = {"trash being emptied": "sounds of trash being emptied", "hi-hat": "hi-hat hits", "claves": "claves clicks"}


def phrase(label: str) -> str:
    return PHRASES.get(label, f"a {label}")


def plural(label: str) -> str:
    if label in PLURALS:
        return PLURALS[label]
    p = phrase(label).split(" ", 1)[1]
    return p + ("es" if p.endswith(("sh", "ch", "ss")) else "s")


@dataclass(frozen=True)
class EventFile:
    path: str
    label: str
    category: str    # alert | household | percussion | keyboard
    package: str     # Debian package
    licence: str


def _theme_files(pattern: str, package: str, licence: str) -> list[EventFile]:
    out = []
    for p in sorted(glob.glob(pattern, recursive=True)):
        name = os.path.splitext(os.path.basename(p))[0].lower()
        if name in _THEME:
            label, cat = _THEME[name]
            out.append(EventFile(p, label, cat, package, licence))
    return out


def _drum_label(name: str) -> str | None:
    n = name.lower()
    for pat, label in _DRUMS:
        if re.search(pat, n):
            return label
    return None


def _hydrogen_files(root: str = "/usr/share/hydrogen/data/drumkits") -> list[EventFile]:
    out = []
    for xml in sorted(glob.glob(os.path.join(root, "*", "drumkit.xml"))):
        kit = os.path.dirname(xml)
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError:
            continue
        ns = tree.tag.split("}")[0] + "}" if tree.tag.startswith("{") else ""
        lic = (tree.findtext(ns + "license") or "").strip() or "see /usr/share/doc/hydrogen-drumkits/copyright"
        lic = f"{os.path.basename(kit)} kit: {lic}"
        for ins in tree.iter(ns + "instrument"):
            label = _drum_label(ins.findtext(ns + "name") or "")
            if not label:
                continue
            for fn in ins.iter(ns + "filename"):
                if fn.text:
                    out.append(EventFile(os.path.join(kit, fn.text), label, "percussion", "hydrogen-drumkits", lic))
    return out


SOURCES = {
    "freedesktop": (lambda: _theme_files("/usr/share/sounds/freedesktop/**/*.oga", "sound-theme-freedesktop",
                                         "GPL-2+/CC-BY (see /usr/share/doc/sound-theme-freedesktop/copyright)"),
                    "/usr/share/sounds/freedesktop", "sound-theme-freedesktop"),
    "yaru": (lambda: _theme_files("/usr/share/sounds/Yaru/**/*.oga", "yaru-theme-sound", "CC-BY-SA-4.0"),
             "/usr/share/sounds/Yaru", "yaru-theme-sound"),
    "oxygen": (lambda: _theme_files("/usr/share/sounds/Oxygen-*.ogg", "oxygen-sounds", "LGPL-3.0-or-later"),
               "/usr/share/sounds/Oxygen-Sys-Log-In.ogg", "oxygen-sounds"),
    "hydrogen": (_hydrogen_files, "/usr/share/hydrogen/data/drumkits", "hydrogen-drumkits"),
    "bucklespring": (lambda: [EventFile(p, "keyboard key press", "keyboard", "bucklespring-data", "GPL-2+")
                              for p in sorted(glob.glob("/usr/share/buckle/wav/*-0.wav"))],
                     "/usr/share/buckle/wav", "bucklespring-data"),
}


def check_sources(names: list[str]) -> None:
    from .speech import EngineMissing

    for n in names:
        _, probe, pkg = SOURCES[n]
        if not os.path.exists(probe):
            raise EngineMissing(f"event source {n!r} not found ({probe}): install it with `apt-get install {pkg}` "
                                "(add it to APT_PKGS in scripts/setup_venv.sh)")


def split_files(files: list[EventFile], holdout: float) -> dict[str, list[EventFile]]:
    by_label: dict[str, list[EventFile]] = {}
    for f in files:
        by_label.setdefault(f.label, []).append(f)
    bench, train = [], []
    for label, group in sorted(by_label.items()):
        group = sorted(group, key=lambda f: stable_hash("file", f.path))
        if len(group) == 1:
            (bench if stable_hash("label", label) % 1000 < holdout * 1000 else train).extend(group)
        else:
            k = min(len(group) - 1, max(1, math.ceil(holdout * len(group))))
            bench += group[:k]
            train += group[k:]
    return {"bench": bench, "train": train, "pref": train}


class EventCatalogue:
    """Labelled files of one split; loads, trims (-40 dB), caps at MAX_EVENT_S and normalises on first use."""

    def __init__(self, files: list[EventFile]):
        self.missing = [f.path for f in files if not os.path.isfile(f.path)]  # listed by a package, absent on disk
        self.files = [f for f in files if os.path.isfile(f.path)]
        self.by_label: dict[str, list[EventFile]] = {}
        for f in self.files:
            self.by_label.setdefault(f.label, []).append(f)
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_config(cls, cfg, split: str) -> "EventCatalogue":
        files: list[EventFile] = []
        seen = set()
        for n in cfg.event_sources:
            for f in SOURCES[n][0]():
                if f.path not in seen:
                    seen.add(f.path)
                    files.append(f)
        return cls(split_files(files, cfg.bench_holdout)[split])

    def labels(self, category: str | None = None, min_files: int = 1) -> list[str]:
        return sorted(l for l, fs in self.by_label.items()
                      if len(fs) >= min_files and (category is None or fs[0].category == category))

    def load(self, f: EventFile) -> np.ndarray:
        if f.path not in self._cache:
            x = trim(read_audio(f.path), -40.0)
            if x.size < int(0.03 * SR):
                raise SourceError("unreadable source file", f"{f.path}: silent after trimming")
            if x.size > int(MAX_EVENT_S * SR):
                x = fade(x[: int(MAX_EVENT_S * SR)], ms=60)
            self._cache[f.path] = normalize(fade(x, ms=3), -3.0)
        return self._cache[f.path]


BACKGROUNDS = ("pink noise", "brown noise", "white noise")


def background(kind: str, n: int, rng: np.random.Generator, level_db: float) -> np.ndarray:
    w = rng.standard_normal(n).astype(np.float64)
    if kind == "pink noise":
        f = np.fft.rfft(w)
        f /= np.sqrt(np.maximum(np.arange(f.size), 1))
        w = np.fft.irfft(f, n)
    elif kind == "brown noise":
        w = np.cumsum(w)
        w -= np.linspace(w[0], w[-1], n)  # remove drift
    w = w / (np.sqrt(np.mean(w ** 2)) + 1e-12) * 10 ** (level_db / 20)
    return w.astype(np.float32)


@dataclass
class PlacedEvent:
    label: str
    start: float
    end: float
    source: str
    category: str = ""

    def as_dict(self) -> dict:
        return {"label": self.label, "start": round(self.start, 6), "end": round(self.end, 6), "source": self.source,
                "category": self.category}


def mix_scene(cat: EventCatalogue, files: list[EventFile], rng: np.random.Generator, min_seconds: float | None = None,
              max_seconds: float = 30.0, min_gap: float = 0.35, bg_db: float | None = None) -> tuple[np.ndarray, list[PlacedEvent], dict]:
    """Place ``files`` in the given order, without overlap, at random onsets on a noise background.

    Returns (waveform, events with exact start/end in seconds, scene metadata). Onsets are whole samples, so
    ``start``/``end`` are exact to 1/16000 s; ``end`` is where the trimmed file stops.
    """
    sounds = [cat.load(f) for f in files]
    if min_seconds is None:  # scenes of varied length (4-12 s, longer when the events need it)
        min_seconds = float(rng.uniform(4.0, 12.0))
    total_ev = sum(s.size for s in sounds) / SR
    need = total_ev + min_gap * (len(sounds) + 1)
    if need > max_seconds:
        raise SourceError("scene too long", f"{len(sounds)} events need {need:.1f} s > {max_seconds} s")
    dur = min(max_seconds, max(min_seconds, need + float(rng.uniform(0.5, 3.0))))
    dur = min(dur, max_seconds)
    n = int(round(dur * SR))
    slack = n - sum(s.size for s in sounds) - int(min_gap * SR) * (len(sounds) + 1)
    cuts = np.sort(rng.integers(0, max(slack, 0) + 1, size=len(sounds)))
    gaps = np.diff(np.concatenate([[0], cuts]))
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    level = float(bg_db if bg_db is not None else rng.uniform(-55.0, -48.0))
    y = background(kind, n, rng, level)
    pos, events = 0, []
    for f, s, g in zip(files, sounds, gaps):
        pos += int(min_gap * SR) + int(g)
        gain = float(10 ** (rng.uniform(-4.0, 0.0) / 20))
        y[pos: pos + s.size] += gain * s
        events.append(PlacedEvent(f.label, pos / SR, (pos + s.size) / SR, f.path, f.category))
        pos += s.size
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y *= 0.99 / peak
    return y, events, {"background": kind, "background_db": round(level, 1), "duration": round(n / SR, 3)}
