"""The PolyAudio sample schema (version 1): one row per multi-audio QA item, stored as Parquet.

A row::

    id             str    unique, e.g. "bench-counting-000123"
    task           str    one of TASKS (Table 2 of the paper)
    split          str    train | pref | bench
    clips          list<struct{audio: binary (FLAC or WAV file bytes), sample_rate: int32,
                                duration: float64 (s), source_id: str, licence: str}>   2–5 clips, each ≤ 30 s
    question       str
    answer         str    natural-language reference answer (consistent with `key`)
    choices        list<str>   MCQ options in order (A, B, C, ...); empty when not MCQ. The question text does
                               not list them: the prompt builder (polyaudio_rl/core/prompts.py) renders them.
    key            str    JSON ground-truth key for rule verification, see GroundTruth
    relevant_clips list<int32>  1-based indices of the clips the answer depends on (clip-parsimony)
    metadata       str    JSON: speakers, events with timestamps, generator version, seed, ...
    schema_version int32

Ground-truth keys (``key`` JSON, ``{"type": T, ...}``); clip indices are 1-based everywhere:

    option       {"type": "option", "value": "B"}                       one MCQ letter
    clip         {"type": "clip", "value": 3}                           one clip index
    yesno        {"type": "yesno", "value": "Yes"|"No"|"Not enough information"}
    permutation  {"type": "permutation", "value": [3, 1, 2]}            clip indices in the asked order
    count        {"type": "count", "value": 4, "tolerance": 0}
    interval     {"type": "interval", "clip": 2, "start": 1.25, "end": 3.5}   seconds within that clip
    keywords     {"type": "keywords", "value": ["river", "lantern"]}    a keyword set (F1)
    value        {"type": "value", "value": "42", "aliases": ["forty-two"], "clips": [1, 3]}
                 a normalised value; ``clips`` optional (e.g. factual consistency: which clips hold it)
    caption      {"type": "caption", "value": "reference caption", "keywords": ["dog", "bark"]}
                 free text: judged by the LLM judge, rule-scored by keyword recall
    clips        {"type": "clips", "value": [1, 3]}                     a set of clip indices (which clips hold X)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa

SCHEMA_VERSION = 1

TASKS = (
    "comparison",
    "temporal_grounding",
    "needle_qa",
    "speaker_linking",
    "odd_one_out",
    "entailment",
    "common_keyword",
    "chronological_ordering",
    "captioning",
    "factual_consistency",
    "counting",
)
SPLITS = ("train", "pref", "bench")
KEY_TYPES = ("option", "clip", "yesno", "permutation", "count", "interval", "keywords", "value", "caption", "clips")
YESNO_VALUES = ("Yes", "No", "Not enough information")

CLIP_TYPE = pa.struct(
    [
        ("audio", pa.binary()),
        ("sample_rate", pa.int32()),
        ("duration", pa.float64()),
        ("source_id", pa.string()),
        ("licence", pa.string()),
    ]
)

ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("clips", pa.list_(CLIP_TYPE)),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("key", pa.string()),
        ("relevant_clips", pa.list_(pa.int32())),
        ("metadata", pa.string()),
        ("schema_version", pa.int32()),
    ],
    metadata={b"polyaudio_schema_version": str(SCHEMA_VERSION).encode()},
)


class SampleError(ValueError):
    """A sample is malformed; the message starts with the sample id and names the field."""


@dataclass
class Clip:
    audio: bytes
    sample_rate: int
    duration: float
    source_id: str = ""
    licence: str = ""


@dataclass
class Sample:
    id: str
    task: str
    split: str
    clips: list[Clip]
    question: str
    answer: str
    key: dict[str, Any]
    relevant_clips: list[int]
    choices: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # -- conversion ---------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "split": self.split,
            "clips": [vars(c).copy() for c in self.clips],
            "question": self.question,
            "answer": self.answer,
            "choices": list(self.choices),
            "key": json.dumps(self.key, sort_keys=True),
            "relevant_clips": [int(i) for i in self.relevant_clips],
            "metadata": json.dumps(self.metadata, sort_keys=True),
            "schema_version": int(self.schema_version),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        sid = row.get("id", "<no id>")
        try:
            key = row["key"] if isinstance(row["key"], dict) else json.loads(row["key"])
            meta = row.get("metadata") or "{}"
            meta = meta if isinstance(meta, dict) else json.loads(meta)
            clips = [Clip(**dict(c)) for c in row["clips"]]
        except KeyError as exc:
            raise SampleError(f"sample {sid}: missing field {exc.args[0]!r}") from exc
        except (TypeError, json.JSONDecodeError) as exc:
            raise SampleError(f"sample {sid}: malformed field: {exc}") from exc
        return cls(
            id=row["id"], task=row["task"], split=row["split"], clips=clips, question=row["question"],
            answer=row["answer"], key=key, relevant_clips=[int(i) for i in (row.get("relevant_clips") or [])],
            choices=list(row.get("choices") or []), metadata=meta,
            schema_version=int(row.get("schema_version") or SCHEMA_VERSION),
        )

    def validate(self, max_clips: int = 5, max_clip_seconds: float = 30.0) -> None:
        """Raise SampleError naming this sample and the field when anything is off."""
        p = f"sample {self.id}"
        if self.task not in TASKS:
            raise SampleError(f"{p}: unknown task {self.task!r} (known: {', '.join(TASKS)})")
        if self.split not in SPLITS:
            raise SampleError(f"{p}: unknown split {self.split!r}")
        if not 1 <= len(self.clips) <= max_clips:
            raise SampleError(f"{p}: clips: {len(self.clips)} clips, need 1..{max_clips}")
        for i, c in enumerate(self.clips, 1):
            if not c.audio:
                raise SampleError(f"{p}: clips[{i}].audio is empty")
            if c.duration > max_clip_seconds + 1e-6:
                raise SampleError(f"{p}: clips[{i}] lasts {c.duration:.2f} s > {max_clip_seconds} s")
        validate_key(self.key, len(self.clips), where=p)
        for i in self.relevant_clips:
            if not 1 <= i <= len(self.clips):
                raise SampleError(f"{p}: relevant_clips has {i}, outside 1..{len(self.clips)}")
        if self.key.get("type") == "option" and not self.choices:
            raise SampleError(f"{p}: key is an option letter but choices is empty")


def validate_key(key: dict[str, Any], n_clips: int, where: str = "sample") -> None:
    """Check a ground-truth key against the types documented in this module."""
    t = key.get("type") if isinstance(key, dict) else None
    if t not in KEY_TYPES:
        raise SampleError(f"{where}: key.type {t!r} is not one of {KEY_TYPES}")
    if t in ("option", "clip", "yesno", "permutation", "count", "keywords", "value", "caption", "clips") and "value" not in key:
        raise SampleError(f"{where}: key of type {t} has no 'value'")
    if t == "clip" and not 1 <= int(key["value"]) <= n_clips:
        raise SampleError(f"{where}: key.value {key['value']} outside 1..{n_clips}")
    if t == "clips" and (not key["value"] or any(not 1 <= int(v) <= n_clips for v in key["value"])
                         or len(set(key["value"])) != len(key["value"])):
        raise SampleError(f"{where}: key.value {key['value']} is not a non-empty set of clips within 1..{n_clips}")
    if t == "yesno" and key["value"] not in YESNO_VALUES:
        raise SampleError(f"{where}: key.value {key['value']!r} not in {YESNO_VALUES}")
    if t == "permutation" and sorted(key["value"]) != sorted(set(key["value"])):
        raise SampleError(f"{where}: key.value {key['value']} is not a permutation")
    if t == "interval":
        for f in ("clip", "start", "end"):
            if f not in key:
                raise SampleError(f"{where}: interval key has no {f!r}")
        if not key["start"] <= key["end"]:
            raise SampleError(f"{where}: interval start {key['start']} > end {key['end']}")


def to_table(samples: Iterable[Sample]) -> pa.Table:
    return pa.Table.from_pylist([s.to_row() for s in samples], schema=ARROW_SCHEMA)


def from_table(table: pa.Table) -> list[Sample]:
    return [Sample.from_row(r) for r in table.to_pylist()]


# -- shard I/O helpers (added by datagen) ---------------------------------------------------------------
def write_shard(path: str, samples: Iterable[Sample], compression: str = "zstd") -> int:
    """Write samples to a Parquet shard atomically: a temporary name in the same directory, then os.replace.
    A crash never leaves a half-written ``*.parquet``. Returns the number of rows written."""
    import os

    import pyarrow.parquet as pq

    table = to_table(samples)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp, compression=compression)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return table.num_rows


def shard_paths(directory: str) -> list[str]:
    """The complete shards (``*.parquet``, not temporaries) of a build directory, sorted."""
    import glob
    import os

    return sorted(glob.glob(os.path.join(directory, "*.parquet")))


def read_samples(directory: str) -> list[Sample]:
    """All samples of a build directory (plain pyarrow)."""
    import pyarrow.parquet as pq

    out: list[Sample] = []
    for p in shard_paths(directory):
        out.extend(from_table(pq.read_table(p, schema=ARROW_SCHEMA)))
    return out
