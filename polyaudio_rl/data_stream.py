"""Ray Data: stream a split's Parquet shards as ready-to-roll-out prompts, in a deterministic, resumable order.

Stages (all CPU):

1. ``read_parquet`` the split's shards (schema: :mod:`polyaudio_rl.core.schema`), keep the configured tasks;
2. a seeded order per epoch (sort by ``hash(seed, epoch, id)``; with ``data.interleave_tasks`` the tasks take turns),
   the same on every run: resuming at position k skips exactly the first k rows of that order. The pipeline keeps
   its blocks in that order (Ray Data's ``preserve_order``) and every row is checked against it (:func:`in_order`);
3. ``map_batches(DecodeStage)`` on an actor pool: decode each clip (FLAC/WAV) to mono float32 at 16 kHz, validate
   it, render the chat-templated prompt. A row that fails (bad audio, too many clips, over 30 s, broken key) is
   kept with an ``error`` naming the sample and the problem; the driver skips it and counts it.

The driver consumes :class:`PromptItem` objects (sample without audio bytes + prompt text + PCM clips).

Replay (``data.replay_cache_mb``): the decoded rows of a split that fits the budget are kept in the driver; once every
row has been decoded, later epochs are served from there in their own seeded order, without a new pipeline (whose
start costs seconds of CPU on every epoch of a small split). The items, positions and bad rows are the same.

Prefetch (``data.prefetch_items`` > 0): a background thread runs the pipeline from :meth:`PromptStream.start` on
(the driver calls it while the actors boot) and keeps up to that many decoded prompts ready (at most one epoch),
epoch after epoch, so the next epoch's pipeline starts while the driver still consumes the last one. ``position`` always counts what the driver took (the resume
point), never what was read ahead.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from polyaudio_rl.core.schema import ARROW_SCHEMA, Sample, SampleError, shard_paths

from .core.audio import AudioError
from .core.prompts import MultiAudioPrompt, PromptError, build_prompt

AUDIO_FREE_COLUMNS = [n for n in ARROW_SCHEMA.names if n != "clips"]
SORT_PARTITION_ROWS = 64  # rows per partition of the epoch's sort (each partition one reduce task)
FOOTER_SHARDS_PER_ACTOR = 256  # Parquet shards per Ray Data footer-reading actor


@dataclass
class PromptItem:
    """One streamed sample: its prompt (with 16 kHz clips) and the sample (clips without audio bytes)."""

    position: int
    prompt: MultiAudioPrompt

    @property
    def sample(self) -> Sample:
        assert self.prompt.sample is not None
        return self.prompt.sample


def order_key(seed: int, epoch: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}:{epoch}:{sample_id}".encode()).hexdigest()


def _take_turns(groups: dict[str, deque[str]], turn: list[str]) -> list[str]:
    """Round-robin over ``turn`` (the groups' keys), one id per group per turn, until every group is empty."""
    out: list[str] = []
    while any(groups[k] for k in turn):
        for k in turn:
            if groups[k]:
                out.append(groups[k].popleft())
    return out


def epoch_order(ids: list[str], tasks: list[str], seed: int, epoch: int, interleave: bool = False,
                answers: list[str] | None = None, families: list[str | None] | None = None) -> list[str]:
    """The ids of one epoch in order: sorted by :func:`order_key`; with ``interleave`` the tasks take turns (in a
    seeded task order), each task's rows in their seeded order, until every row is placed once. With ``answers``
    (one reference answer per row; needs ``interleave``) a task's rows also take turns by answer (in a seeded answer
    order, each answer's rows in their seeded order): a task's rows alternate answers while more than one is left
    (the rarest run out first, so an epoch's tail holds the common answers). Rows of one paraphrase family
    (``families[i]``, datagen's ``metadata.family``; None: a row of its own) are ranked by the family's key and
    then by id, so they stay next to each other and share a GRPO batch."""
    fam = families or [None] * len(ids)
    ranked = sorted(range(len(ids)), key=lambda i: (order_key(seed, epoch, fam[i] or ids[i]), ids[i]))
    if not interleave:
        if answers is not None:
            raise ValueError("epoch_order: balancing answers needs interleave (data.balance_answers needs "
                             "data.interleave_tasks)")
        return [ids[i] for i in ranked]
    queues: dict[str, deque[str]] = defaultdict(deque)
    by_answer: dict[str, dict[str, deque[str]]] = defaultdict(lambda: defaultdict(deque))
    for i in ranked:
        if answers is None:
            queues[tasks[i]].append(ids[i])
        else:
            by_answer[tasks[i]][answers[i]].append(ids[i])
    for t, groups in by_answer.items():
        queues[t] = deque(_take_turns(groups, sorted(groups, key=lambda a: order_key(seed, epoch, f"answer:{t}:{a}"))))
    turn = sorted(queues, key=lambda t: order_key(seed, epoch, f"task:{t}"))
    return _take_turns(queues, turn)


class StreamOrderError(RuntimeError):
    """The pipeline yielded a row other than the next one of the epoch's seeded order."""


def in_order(rows: Iterator[dict[str, Any]], expected: list[str]) -> Iterator[dict[str, Any]]:
    """``rows`` (records with an ``id``) passed through, checked against ``expected`` ids one by one: a row out of
    place, a missing row or an extra one raises :class:`StreamOrderError` naming the position and both ids (a run
    must never train on an order other than its seeded one)."""
    k = -1
    for k, rec in enumerate(rows):
        want = expected[k] if k < len(expected) else None
        if rec["id"] != want:
            raise StreamOrderError(f"prompt stream: row {k} of the epoch is {rec['id']!r}, the seeded order has "
                                   f"{want!r} there" + ("" if want else f" (only {len(expected)} rows)"))
        yield rec
    if k + 1 != len(expected):
        raise StreamOrderError(f"prompt stream: the pipeline ended after {k + 1} rows, the seeded order has "
                               f"{len(expected)} ({expected[k + 1]!r} next)")


def sort_cuts(rows: int, per_partition: int | None = None) -> list[int]:
    """The epoch sort's boundaries on the order keys 0..rows-1: a partition every ``per_partition`` rows
    (:data:`SORT_PARTITION_ROWS`); one cut past the end for a split that fits one (Ray Data takes no boundaries as
    "sample them")."""
    step = per_partition or SORT_PARTITION_ROWS
    return list(range(step, rows, step)) or [rows]


def _order_columns(paths: list[str], tasks: list[str] | None) -> list[dict[str, Any]]:
    """The rows' ``id``, ``task``, ``answer`` and ``metadata`` in shard order (those of ``tasks`` only, when given),
    read with pyarrow on the driver: a few small columns, where a Ray Data pipeline would cost seconds of start-up
    on every stream (and on every recovery); a shard that cannot be read is an error naming it."""
    import pyarrow.parquet as pq

    keep = set(tasks or [])
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=["id", "task", "answer", "metadata"])
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise ValueError(f"{path}: cannot read the shard's id/task/answer/metadata columns ({exc})") from exc
        rows.extend(r for r in table.to_pylist() if not keep or r["task"] in keep)
    return rows


def _family(metadata: Any) -> str | None:
    """The paraphrase family a row belongs to (datagen's ``metadata.family``), or None."""
    try:
        meta = json.loads(metadata) if isinstance(metadata, str) else (metadata or {})
    except ValueError:
        return None  # a broken metadata string is the decode stage's to report, not the order's
    return meta.get("family") if isinstance(meta, dict) else None


class DecodeStage:
    """Ray Data callable class (one per pool actor): decode + validate + render prompts for a batch of rows."""

    def __init__(self, processor_path: str, max_clips: int, min_clips: int, max_clip_seconds: float,
                 system_prompt: str, answer_tag: bool):
        from .core.model import load_processor

        self.processor = load_processor(processor_path)
        self.kw = dict(max_clips=max_clips, min_clips=min_clips, max_clip_seconds=max_clip_seconds,
                       system_prompt=system_prompt, answer_tag=answer_tag)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["id"])
        out: dict[str, list] = {"id": [], "row": [], "text": [], "pcm": [], "error": [], "okey": []}
        for i in range(n):
            row = {k: _py(batch[k][i]) for k in batch}
            out["id"].append(row["id"])
            out["okey"].append(row["okey"])
            try:
                prompt = build_prompt(row, self.processor, **self.kw)
                prompt.sample.validate(self.kw["max_clips"], self.kw["max_clip_seconds"])
                text, pcm, err = prompt.text, [a.astype(np.float32).tobytes() for a in prompt.audios], ""
            except (AudioError, PromptError, SampleError) as exc:  # these name the sample and clip themselves
                text, pcm, err = "", [], str(exc)
            except (KeyError, TypeError, ValueError) as exc:  # a malformed row: name it here
                text, pcm, err = "", [], f"sample {row.get('id')}: {type(exc).__name__}: {exc}"
            light = {k: v for k, v in row.items() if k not in ("clips", "okey")}
            light["clips"] = [
                {"sample_rate": c["sample_rate"], "duration": c["duration"],
                 "source_id": c.get("source_id", ""), "licence": c.get("licence", "")}
                for c in (row.get("clips") or [])
            ]
            out["row"].append(json.dumps(light))
            out["text"].append(text)
            out["pcm"].append(pcm)
            out["error"].append(err)
        return out


def _py(v: Any) -> Any:
    """numpy/arrow scalars and arrays from a Ray Data numpy batch → plain Python."""
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()] if v.dtype == object else v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, dict):
        return {k: _py(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_py(x) for x in v]
    return v


def _item(rec: dict[str, Any], position: int) -> PromptItem:
    row = json.loads(rec["row"])
    for c in row["clips"]:
        c["audio"] = b""  # audio travels as 16 kHz PCM in the prompt, not as file bytes
    sample = Sample.from_row(row)
    audios = [np.frombuffer(b, dtype=np.float32).copy() for b in rec["pcm"]]
    return PromptItem(position, MultiAudioPrompt(sample.id, rec["text"], audios, sample))


class StreamClosed(RuntimeError):
    """:meth:`PromptStream.take` on a stream that was closed."""


class PromptStream:
    """Iterate a split as :class:`PromptItem` s, epoch after epoch, from a resumable position.

    ``position`` counts rows of the seeded order consumed so far (bad rows included), over all epochs.
    ``bad`` lists (sample id, reason) of the rows skipped. ``wait_s`` adds up the time :meth:`take` waited.
    """

    def __init__(self, split_dir: str, processor_path: str, data_cfg: Any, seed: int = 0, decode_actors: int = 1,
                 position: int = 0):
        import ray

        self.paths = shard_paths(split_dir)
        if not self.paths:
            raise FileNotFoundError(f"no Parquet shards in {split_dir!r} (build them with `python -m datagen build`)")
        self.processor_path = processor_path
        self.cfg = data_cfg
        self.seed = seed
        self.decode_actors = decode_actors
        self.position = position
        self._bad: list[tuple[int, str, str]] = []  # (position, sample id, reason), also rows read ahead
        self.wait_s = 0.0
        self.prefetch = int(getattr(data_cfg, "prefetch_items", 0) or 0)
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Ray Data reads Parquet footers on a pool of actors (up to 32), each a process to start: one per
        # FOOTER_SHARDS_PER_ACTOR shards (a user's RAY_DATA_PARQUET_FOOTER_NUM_ACTORS wins)
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS",
                              str(min(32, -(-len(self.paths) // FOOTER_SHARDS_PER_ACTOR))))
        rows = _order_columns(self.paths, data_cfg.tasks)  # the order and resume work on ids
        ds = ray.data.read_parquet(self.paths, columns=ARROW_SCHEMA.names)
        if data_cfg.tasks:
            keep = set(data_cfg.tasks)
            ds = ds.filter(lambda r: r["task"] in keep)
        self._base = ds
        self._ids = [r["id"] for r in rows]
        self._families = [_family(r.get("metadata")) for r in rows]
        self._tasks = [r["task"] for r in rows]
        self._answers = [r["answer"] for r in rows] if getattr(data_cfg, "balance_answers", False) else None
        self.num_rows = len(self._ids)
        if self.num_rows == 0:
            raise ValueError(f"{split_dir}: no rows left after the task filter {data_cfg.tasks}")
        if len(set(self._ids)) != self.num_rows:
            dup = sorted(i for i, n in Counter(self._ids).items() if n > 1)[:5]
            raise ValueError(f"{split_dir}: sample ids must be unique within a split; repeated: {dup}")
        self._it: Iterator[PromptItem] | None = None
        self._decoded: dict[str, dict[str, Any]] = {}  # id -> decoded record, for replay (data.replay_cache_mb)
        self._decoded_bytes = 0
        self._replay_ok = int(getattr(data_cfg, "replay_cache_mb", 0) or 0) > 0
        self.streamed_epochs = 0  # epochs (or their remainders) read through a Ray Data pipeline
        self.replayed_epochs = 0  # epochs served from the decoded rows

    def start(self) -> "PromptStream":
        """Start decoding ahead now (the first :meth:`take` does it otherwise): e.g. while the actors boot."""
        if self.prefetch > 0 and self._thread is None and not self._stop.is_set():
            self._start_prefetch()
        return self

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(sample id, reason) of the bad rows the driver has passed (read-ahead rows are not counted yet)."""
        return [(sid, why) for pos, sid, why in self._bad if pos < self.position]

    # ------------------------------------------------------------------------------------------------ prefetch
    def _start_prefetch(self) -> None:
        # at most one epoch ahead: on a small split the next epoch's pipeline starts early, and no more of it runs
        self._queue = queue.Queue(maxsize=min(self.prefetch, self.num_rows))
        self._stop.clear()
        self._thread = threading.Thread(target=self._fill, name="prompt-stream-prefetch", daemon=True)
        self._thread.start()

    def _put(self, obj: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        it = self._generate(self.position)
        try:
            for item in it:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised by take()
            self._put(exc)
        finally:
            it.close()

    def _order(self, epoch: int) -> list[str]:
        """The ids of ``epoch`` in stream order (:func:`epoch_order` with this stream's settings)."""
        return epoch_order(self._ids, self._tasks, self.seed, epoch, bool(getattr(self.cfg, "interleave_tasks", False)),
                           self._answers, self._families)

    def _epoch(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        import ray

        order = self._order(epoch)
        rank = {sid: k for k, sid in enumerate(order)}
        base = self._base
        if skip:  # resuming mid-epoch: drop the rows already consumed *before* decoding (reads only the ids)
            done = set(order[:skip])
            base = base.filter(lambda r: r["id"] not in done)
        # the order is known: explicit boundaries spare the sort its sampling pass and Ray Data's default 200 partitions
        ds = base.map(lambda r: {**r, "okey": rank[r["id"]]}).sort("okey", boundaries=sort_cuts(len(order)))
        ds = ds.map_batches(
            DecodeStage,
            fn_constructor_kwargs=dict(
                processor_path=self.processor_path, max_clips=self.cfg.max_clips, min_clips=self.cfg.min_clips,
                max_clip_seconds=self.cfg.max_clip_seconds, system_prompt=self.cfg.system_prompt,
                answer_tag=self.cfg.answer_tag,
            ),
            batch_size=8,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.decode_actors),
            num_cpus=0.5,
        )
        # Ray Data hands blocks on as they finish unless told to keep their order: under load a later block of the
        # sorted split could come first (another run's order; a paraphrase family split over two batches)
        ds.context.execution_options.preserve_order = True
        yield from in_order(ds.iter_rows(), order[skip:])

    def _remember(self, rec: Any) -> None:
        """Keep a decoded record for replay while the split fits ``data.replay_cache_mb``."""
        if not self._replay_ok or rec["id"] in self._decoded:
            return
        keep = {k: rec[k] for k in ("id", "row", "text", "pcm", "error")}
        self._decoded_bytes += len(keep["row"]) + len(keep["text"]) + sum(len(b) for b in keep["pcm"])
        if self._decoded_bytes > self.cfg.replay_cache_mb * 2**20:
            self._replay_ok = False  # too big to hold: every epoch streams
            self._decoded.clear()
            return
        self._decoded[keep["id"]] = keep

    def _replay(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        order = self._order(epoch)
        for sid in order[skip:]:
            yield self._decoded[sid]

    def __iter__(self) -> Iterator[PromptItem]:
        if self._it is None:
            self._it = self._generate(self.position)
        return self._it

    def _generate(self, start: int) -> Iterator[PromptItem]:
        """Good items from row ``start`` of the seeded order on, epoch after epoch; bad rows are recorded."""
        pos = start
        while True:
            epoch, skip = divmod(pos, self.num_rows)
            replay = self._replay_ok and len(self._decoded) == self.num_rows
            if replay:
                self.replayed_epochs += 1
            else:
                self.streamed_epochs += 1
            for rec in (self._replay(epoch, skip) if replay else self._epoch(epoch, skip)):
                self._remember(rec)
                here, pos = pos, pos + 1
                if rec["error"]:
                    self._bad.append((here, rec["id"], rec["error"]))
                    continue
                yield _item(rec, here)

    def close(self) -> None:
        """Stop the running Ray Data pipeline and the prefetch thread (call before ray.shutdown())."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._it is not None:
            self._it.close()
            self._it = None

    def _next(self) -> PromptItem:
        self.start()
        if self._queue is None:
            return next(iter(self))  # one pipeline kept across calls, not restarted per batch
        while True:
            try:
                got = self._queue.get(timeout=0.2)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise StreamClosed("the prompt stream was closed") from None
        if isinstance(got, BaseException):
            raise got
        return got

    def take(self, n: int) -> list[PromptItem]:
        """The next ``n`` good items (crossing epochs as needed); ``position`` moves past the last one."""
        import time

        t0 = time.perf_counter()
        out = [self._next() for _ in range(n)]
        self.wait_s += time.perf_counter() - t0
        self.position = out[-1].position + 1 if out else self.position
        return out
