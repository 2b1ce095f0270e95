"""Real corpora on disk (AudioSet, PicoAudio, LibriSpeech, MusicCaps, Music4All, Clotho, AudioCaps), by manifest.

A manifest is CSV or JSONL, one row per audio file: a path (absolute, or relative to the manifest's folder) plus
labels / captions / transcripts. Each corpus accepts its usual column names (see ``FIELDS``). Rows with no path,
a missing file or malformed fields are skipped and counted with the reason; an unreadable audio file is found
when an item uses it (the item is retried, then skipped and counted). Rows are split between bench and
train/pref by a stable hash of their path relative to the manifest (share ``bench_holdout``), so bench never
reuses a train file, and the split does not change when the corpus and its manifest move to another folder.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field

from ..audio import SR, SourceError, read_audio
from .speech import EngineMissing, stable_hash

# canonical field -> accepted column names, per corpus (first present wins)
_COMMON = {"path": ["path", "audio", "audio_path", "file", "filename", "file_name", "wav"]}
FIELDS: dict[str, dict[str, list[str]]] = {
    "audiocaps": {"caption": ["caption"], "id": ["audiocap_id", "youtube_id"]},
    "clotho": {"caption": ["caption", "caption_1"], "id": ["file_name"]},
    "musiccaps": {"caption": ["caption"], "labels": ["aspect_list"], "id": ["ytid"]},
    "audioset": {"labels": ["labels", "display_names", "positive_labels"], "id": ["ytid", "YTID"]},
    "picoaudio": {"caption": ["caption", "onoff_caption"], "events": ["events", "timestamps"], "id": ["id"]},
    "librispeech": {"transcript": ["transcript", "text"], "speaker": ["speaker", "speaker_id"], "id": ["id", "utt_id"]},
    "music4all": {"labels": ["genres", "tags"], "tempo": ["tempo"], "key": ["key"], "mode": ["mode"], "id": ["id"]},
}


@dataclass
class CorpusRow:
    corpus: str
    path: str
    caption: str = ""
    labels: list[str] = field(default_factory=list)
    transcript: str = ""
    speaker: str = ""
    events: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    key: str = ""  # the file's path relative to its manifest's folder: where the corpus is mounted does not matter


def _get(row: dict, names: list[str]):
    for n in names:
        if n in row and row[n] not in (None, ""):
            return row[n]
    return None


def _labels(v) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x).strip() for x in v if str(x).strip()]
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x).strip() for x in json.loads(s.replace("'", '"'))]
        except json.JSONDecodeError:
            pass
    sep = ";" if ";" in s else ","
    return [x.strip().strip('"') for x in s.split(sep) if x.strip()]


def load_manifest(path: str, corpus: str) -> tuple[list[CorpusRow], Counter, dict]:
    """Rows of one manifest, plus (reason -> skipped rows) and one example message per reason."""
    if corpus not in FIELDS:
        raise ValueError(f"unknown corpus {corpus!r} (known: {sorted(FIELDS)})")
    base = os.path.dirname(os.path.abspath(path))
    fields = {**_COMMON, **FIELDS[corpus]}
    rejects: Counter = Counter()
    examples: dict = {}

    def bad(reason: str, msg: str) -> None:
        rejects[reason] += 1
        examples.setdefault(reason, msg)

    raw: list[tuple[int, dict]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        if path.endswith((".jsonl", ".json")):
            for ln, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    raw.append((ln, obj))
                except (json.JSONDecodeError, ValueError) as exc:
                    bad("malformed manifest row", f"{path}:{ln}: {exc}")
        else:
            for ln, obj in enumerate(csv.DictReader(fh), 2):
                raw.append((ln, obj))
    rows = []
    for ln, r in raw:
        p = _get(r, fields["path"])
        if not p:
            bad("manifest row without audio path", f"{path}:{ln}")
            continue
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(p):
            bad("missing source file", f"{path}:{ln}: {p}")
            continue
        events = _get(r, fields.get("events", []))
        if isinstance(events, str):
            try:
                events = json.loads(events)
            except json.JSONDecodeError:
                bad("malformed manifest row", f"{path}:{ln}: events is not JSON")
                continue
        extra = {k: _get(r, v) for k, v in fields.items() if k in ("tempo", "key", "mode", "id")}
        rows.append(CorpusRow(corpus, p, str(_get(r, fields.get("caption", [])) or ""),
                              _labels(_get(r, fields.get("labels", []))),
                              str(_get(r, fields.get("transcript", [])) or ""),
                              str(_get(r, fields.get("speaker", [])) or ""), events or [],
                              {k: v for k, v in extra.items() if v is not None}, os.path.relpath(p, base)))
    return rows, rejects, examples


def check_corpora(cfg) -> None:
    for corpus, path in cfg.corpora.items():
        if not os.path.isfile(path):
            raise EngineMissing(f"corpus {corpus!r}: manifest {path} not found (datagen.corpora.{corpus})")


class CorpusSet:
    """The configured corpora's rows for one split."""

    def __init__(self, rows: list[CorpusRow], rejects: Counter | None = None, examples: dict | None = None):
        self.rows = rows
        self.rejects = rejects or Counter()
        self.examples = examples or {}
        self.captioned = [r for r in rows if r.caption or r.labels]

    @classmethod
    def from_config(cls, cfg, split: str) -> "CorpusSet":
        rows, rej, ex = [], Counter(), {}
        for corpus, path in sorted(cfg.corpora.items()):
            r, c, e = load_manifest(path, corpus)
            rows += r
            rej.update(c)
            for k, v in e.items():
                ex.setdefault(k, v)
        thr = cfg.bench_holdout * 1000
        keep = [r for r in rows if (stable_hash("corpus", r.corpus, r.key) % 1000 < thr) == (split == "bench")]
        return cls(keep, rej, ex)

    def has_captions(self) -> bool:
        return bool(self.captioned)

    # -- pools used by the task generators -----------------------------------------------------------
    def by_speaker(self) -> dict[str, list[CorpusRow]]:
        """Speech rows (LibriSpeech) by speaker id."""
        out: dict[str, list[CorpusRow]] = {}
        for r in self.rows:
            if r.speaker:
                out.setdefault(r.speaker, []).append(r)
        return out

    def with_events(self) -> list[CorpusRow]:
        """Rows with timestamped events (PicoAudio): [[label, start, end], ...] or [{label, start, end}, ...]."""
        return [r for r in self.rows if r.events]

    def with_tempo(self) -> list[CorpusRow]:
        out = []
        for r in self.rows:
            try:
                if float(r.extra.get("tempo", "")) > 0:
                    out.append(r)
            except (TypeError, ValueError):
                pass
        return out

    @staticmethod
    def events_of(row: CorpusRow) -> list[dict]:
        evs = []
        for e in row.events:
            if isinstance(e, dict):
                evs.append({"label": str(e["label"]), "start": float(e["start"]), "end": float(e["end"])})
            else:
                evs.append({"label": str(e[0]), "start": float(e[1]), "end": float(e[2])})
        return evs

    def clip(self, ctx, row: CorpusRow, **meta):
        """The row's audio as a clip (16 kHz mono; longer than max_clip_seconds => SourceError, never truncated)."""
        from ..tasks.base import ClipDraft

        wav = read_audio(row.path, SR)
        if wav.size > ctx.cfg.max_clip_seconds * SR:
            raise SourceError("clip too long", f"{row.path}: {wav.size / SR:.1f} s > {ctx.cfg.max_clip_seconds} s")
        m = {"kind": "corpus", "corpus": row.corpus, "path": row.path, **row.extra, **meta}
        if row.transcript:
            m["transcript"] = row.transcript
        if row.speaker:
            m["speaker"] = f"{row.corpus}:{row.speaker}"
        if row.events:
            m["events"] = self.events_of(row)
        return ClipDraft(wav, m, f"{row.corpus}:{os.path.basename(row.path)}", f"{row.corpus} (see its licence)")

    def captioned_clip(self, ctx, rng):
        from ..text import content_words

        row = self.captioned[int(rng.integers(len(self.captioned)))]
        caption = row.caption or ("sounds of " + ", ".join(row.labels))
        kws = [l.lower() for l in row.labels if l.lower() in caption.lower()][:5] or sorted(content_words(caption))[:5]
        return self.clip(ctx, row, caption=caption, keywords=kws, labels=row.labels)
