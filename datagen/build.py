"""Build one split: plan items, generate them in worker processes, write Parquet shards atomically, report, card.

    python -m datagen build --split {train,pref,bench} --preset {ci,small,paper} --out DIR [--seed N]

Items are planned as (task, index) for index < items-per-task, interleaved by index so every shard mixes tasks;
item (task, index) gets ``index % 4 + 2`` clips (balanced 2-5) and a seed derived from (seed, split, task, index),
so the content does not depend on the number of workers. Shards hold ``shard_items`` consecutive planned items.
A failing item is retried with fresh sub-seeds, then skipped and counted with its reason; nothing else is lost.

Resume: while a build runs, ``.datagen-progress.json`` in the output directory records each finished shard (file,
rows, sha256, the plan position after its last item, and the items skipped or retried in its range), written
atomically after the shard itself, together with a fingerprint of everything that decides the content (config
without ``workers``, split, plan size, shard size, generator version). Re-running the same build on an interrupted
directory keeps every recorded shard whose file is intact, regenerates from the plan position after the last kept
shard (items are deterministic, so the remaining shards equal those of an uninterrupted build: no item missing or
duplicated) and says so in the data card (``resumed``, ``kept_shards``, ``kept_items``, ``resumed_at_item``,
``resumes``). A build that completes removes the progress file; a different configuration, a missing or
mismatching progress file, or ``resume=False`` (``--fresh``) builds from scratch.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .config import DatagenConfig
from polyaudio_rl.core.schema import write_shard

CHUNK = 4  # items per unit of work sent to a worker (progress granularity)
PROGRESS_FILE = ".datagen-progress.json"


@dataclass
class BuildReport:
    split: str
    preset: str
    seed: int
    planned: int = 0
    written: int = 0
    counts: dict = field(default_factory=lambda: defaultdict(Counter))   # task -> n_clips -> items
    rejects: Counter = field(default_factory=Counter)                      # reason -> items skipped
    rejects_by_task: Counter = field(default_factory=Counter)              # task -> items skipped
    reject_examples: dict = field(default_factory=dict)                    # reason -> one detail message
    retries: Counter = field(default_factory=Counter)                      # reason -> failed attempts that were retried
    durations: list = field(default_factory=list)                          # clip durations (s)
    speakers: Counter = field(default_factory=Counter)
    event_labels: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)                      # licence string -> clips
    kinds: Counter = field(default_factory=Counter)                        # speech/events/music/corpus -> clips
    shards: list = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    missing_source_files: list = field(default_factory=list)
    manifest_rejects: dict = field(default_factory=dict)                   # corpus manifest rows skipped, by reason
    resumed: bool = False                                                  # continued an interrupted build
    kept_shards: int = 0                                                   # shards of the interrupted build kept
    kept_items: int = 0                                                    # items in them
    resumed_at_item: int = 0                                               # plan position generation restarted at
    resumes: int = 0                                                       # interruptions this build survived

    def add(self, res) -> None:
        if res.sample is None:
            self.rejects[res.reason] += 1
            self.rejects_by_task[res.task] += 1
            self.reject_examples.setdefault(res.reason, res.detail)
            return
        for r in res.retries:
            self.retries[r] += 1
        s = res.sample
        self.written += 1
        self.counts[s.task][len(s.clips)] += 1
        for c, m in zip(s.clips, s.metadata["clips"]):
            self.durations.append(c.duration)
            self.bytes += len(c.audio)
            for lic in c.licence.split("; "):
                self.sources[lic] += 1
            self.kinds[m.get("kind", "?")] += 1
            if m.get("speaker"):
                self.speakers[m["speaker"]] += 1
            for e in m.get("events", []):
                self.event_labels[e["label"]] += 1

    def as_dict(self) -> dict[str, Any]:
        import numpy as np

        d = np.asarray(self.durations or [0.0])
        return {
            "split": self.split, "preset": self.preset, "seed": self.seed, "planned": self.planned,
            "written": self.written, "skipped": sum(self.rejects.values()),
            "counts": {t: {str(k): v for k, v in sorted(c.items())} for t, c in sorted(self.counts.items())},
            "clip_count_histogram": {str(k): sum(c[k] for c in self.counts.values()) for k in range(1, 6)
                                     if any(k in c for c in self.counts.values())},
            "rejects": dict(self.rejects), "rejects_by_task": dict(self.rejects_by_task),
            "reject_examples": self.reject_examples, "retries": dict(self.retries),
            "durations": {"clips": int(len(self.durations)), "mean": round(float(d.mean()), 3),
                          "min": round(float(d.min()), 3), "max": round(float(d.max()), 3),
                          "p50": round(float(np.percentile(d, 50)), 3), "total_hours": round(float(d.sum()) / 3600, 4)},
            "clip_kinds": dict(self.kinds), "speakers": dict(sorted(self.speakers.items())),
            "event_labels": dict(sorted(self.event_labels.items())), "licences": dict(self.sources),
            "missing_source_files": self.missing_source_files, "manifest_rejects": self.manifest_rejects,
            "shards": self.shards, "audio_bytes": self.bytes, "build_seconds": round(self.seconds, 2),
            "workers": self.workers, "resumed": self.resumed, "kept_shards": self.kept_shards,
            "kept_items": self.kept_items, "resumed_at_item": self.resumed_at_item, "resumes": self.resumes,
        }


def plan(cfg: DatagenConfig, split: str) -> list[tuple[str, int]]:
    n = cfg.n_items(split)
    return [(t, i) for i in range(n) for t in cfg.task_list()]


def check_setup(cfg: DatagenConfig) -> None:
    """Fail at start, naming the engine and how to install it, when a configured engine/source is missing."""
    from .sources.events import check_sources
    from .sources.music import check_music
    from .sources.speech import check_engines

    check_engines(cfg)
    check_sources(cfg.event_sources)
    check_music(cfg)
    if cfg.corpora:
        from .sources.corpora import check_corpora

        check_corpora(cfg)
    if cfg.llm.enabled and not cfg.llm.base_url:
        from .sources.speech import EngineMissing

        raise EngineMissing("datagen.llm.enabled is true but datagen.llm.base_url is empty: point it at an "
                            "OpenAI-compatible /v1 endpoint")


# -- worker side ----------------------------------------------------------------------------------------
_CTX = None


def make_context(cfg: DatagenConfig, split: str):
    from .tasks.base import Context

    ctx = Context(cfg, split)
    if cfg.corpora:
        from .sources.corpora import CorpusSet

        ctx.corpora = CorpusSet.from_config(cfg, split)
    if cfg.llm.enabled:
        from .llm import LLMAuthor

        ctx.author = LLMAuthor.from_config(cfg)
    return ctx


def _init(cfg: DatagenConfig, split: str) -> None:
    global _CTX
    _CTX = make_context(cfg, split)


def _work(chunk: list[tuple[str, int]]):
    from .generate import make_item

    return [make_item(_CTX, t, i) for t, i in chunk]


def _pool_results(cfg: DatagenConfig, split: str, chunks: list, workers: int):
    """Yield each chunk's results in plan order from a spawn process pool.

    A worker that dies (a native crash, the OOM killer) breaks the pool: it is restarted and the unfinished chunks
    are resubmitted (items are deterministic, so a redo gives the same content). A chunk present at two breaks is
    run alone; if that breaks too, its items are skipped and counted as "worker crashed". Nothing hangs.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .generate import ItemResult

    def pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(cfg, split))

    window = workers * 8
    ex, inflight, nxt, emit = pool(workers), {}, 0, 0
    breaks: Counter = Counter()
    try:
        while emit < len(chunks):
            while nxt < len(chunks) and len(inflight) < window:
                inflight[nxt] = ex.submit(_work, chunks[nxt])
                nxt += 1
            try:
                res = inflight[emit].result()
            except BrokenProcessPool as exc:
                ex.shutdown(wait=True, cancel_futures=True)
                for j in inflight:
                    breaks[j] += 1
                if breaks[emit] >= 2:  # isolate the suspect chunk
                    solo = pool(1)
                    try:
                        res = solo.submit(_work, chunks[emit]).result()
                    except BrokenProcessPool:
                        res = [ItemResult(t, i, reason="worker crashed", detail=f"{t}#{i}: {exc}")
                               for t, i in chunks[emit]]
                    finally:
                        solo.shutdown(wait=True, cancel_futures=True)
                    inflight.pop(emit)
                    yield res
                    emit += 1
                ex = pool(workers)
                inflight = {j: ex.submit(_work, chunks[j]) for j in sorted(inflight)}
                continue
            inflight.pop(emit)
            yield res
            emit += 1
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# -- resume ---------------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_fingerprint(cfg: DatagenConfig, split: str, planned: int, shard_items: int) -> str:
    """What decides a build's content: the config (``workers`` aside), split, plan size, shard size, generator."""
    from dataclasses import asdict

    from .tasks.base import GENERATOR_VERSION

    conf = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    body = {"config": conf, "split": split, "planned": planned, "shard_items": shard_items,
            "generator": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _write_progress(out: str, progress: dict) -> None:
    path = os.path.join(out, PROGRESS_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(progress, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _kept_shards(out: str, fingerprint: str) -> tuple[list[dict], int, str]:
    """The shards of an interrupted build of the same content that are still intact, the number of earlier resumes,
    and why nothing was kept (empty when something was)."""
    path = os.path.join(out, PROGRESS_FILE)
    if not os.path.exists(path):
        return [], 0, "no progress file"
    try:
        prog = json.load(open(path))
    except (OSError, ValueError) as exc:
        return [], 0, f"unreadable {PROGRESS_FILE}: {exc}"
    if prog.get("fingerprint") != fingerprint:
        return [], 0, "the interrupted build had a different configuration"
    kept = []
    for rec in prog.get("shards", []):  # keep the longest intact prefix
        f = os.path.join(out, rec["file"])
        if not os.path.isfile(f) or os.path.getsize(f) != rec["bytes"] or _sha256(f) != rec["sha256"]:
            print(f"[datagen] resume: shard {rec['file']} is missing or damaged; regenerating from it", file=sys.stderr)
            break
        kept.append(rec)
    return kept, int(prog.get("resumes", 0)), "" if kept else "no intact shard"


def _replay(rep: BuildReport, out: str, rec: dict) -> None:
    """Add a kept shard's items (read back from the shard) and its range's skips and retries to the report."""
    import pyarrow.parquet as pq

    from polyaudio_rl.core.schema import ARROW_SCHEMA, from_table

    from .generate import ItemResult

    samples = from_table(pq.read_table(os.path.join(out, rec["file"]), schema=ARROW_SCHEMA))
    if len(samples) != rec["items"]:
        raise RuntimeError(f"{rec['file']}: {len(samples)} rows, the progress file recorded {rec['items']}")
    for smp in samples:
        rep.add(ItemResult(smp.task, -1, sample=smp))
    for task, reason, detail in rec["rejects"]:
        rep.add(ItemResult(task, -1, reason=reason, detail=detail))
    for reason in rec["retries"]:
        rep.retries[reason] += 1
    rep.shards.append({"file": rec["file"], "items": rec["items"]})


def interrupted(out: str) -> bool:
    """Whether ``out`` holds a build that has not completed (its shards are not the whole split yet)."""
    return os.path.exists(os.path.join(out, PROGRESS_FILE))


# -- driver ---------------------------------------------------------------------------------------------
def build(cfg: DatagenConfig, split: str, out: str, progress: bool = True, resume: bool = True) -> BuildReport:
    """Build ``split`` into directory ``out``; returns the report (also written as the data card).

    With ``resume`` (the default) an interrupted build of the same configuration in ``out`` is continued: its
    intact shards are kept and only the rest is generated (see the module docstring)."""
    from tqdm import tqdm

    from .card import write_card

    check_setup(cfg)
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    items = plan(cfg, split)
    rep = BuildReport(split, cfg.preset, cfg.seed, planned=len(items))
    shard_items = max(1, min(cfg.shard_items, math.ceil(len(items) / 8))) if items else 1
    shard_items = max(CHUNK, shard_items - shard_items % CHUNK)
    fingerprint = build_fingerprint(cfg, split, len(items), shard_items)
    kept, resumes, why = _kept_shards(out, fingerprint) if resume else ([], 0, "resume=False")
    if not kept and os.path.exists(os.path.join(out, PROGRESS_FILE)):
        print(f"[datagen] not resuming the interrupted build in {out} ({why}): building from scratch", file=sys.stderr)
    for rec in kept:
        _replay(rep, out, rec)
    start = kept[-1]["plan_next"] if kept else 0
    if kept:
        rep.resumed, rep.kept_shards, rep.resumed_at_item, rep.resumes = True, len(kept), start, resumes + 1
        rep.kept_items = sum(r["items"] for r in kept)
        print(f"[datagen] resuming {out}: kept {len(kept)} shards ({rep.kept_items} items), generating from item "
              f"{start} of {len(items)}", file=sys.stderr)
    prog = {"fingerprint": fingerprint, "split": split, "planned": len(items), "shard_items": shard_items,
            "resumes": rep.resumes, "shards": list(kept)}
    chunks = [items[i: i + CHUNK] for i in range(start, len(items), CHUNK)]
    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(chunks) or 1))
    rep.workers = workers
    stale = {p for p in os.listdir(out) if p.endswith(".parquet")} - {r["file"] for r in kept}
    pending: list = []  # (plan position, sample) not yet in a shard
    events: list = []  # (plan position, "reject"|"retry", payload) not yet assigned to a shard
    shard_no = len(kept)

    def flush(final: bool = False) -> None:
        nonlocal pending, events, shard_no
        while len(pending) >= shard_items or (final and pending):
            part, pending = pending[:shard_items], pending[shard_items:]
            # the shard's plan range ends after its last item; at the end of the build it covers the rest too
            plan_next = len(items) if final and not pending else part[-1][0] + 1
            name = f"{split}-{shard_no:05d}.parquet"
            path = os.path.join(out, name)
            write_shard(path, [smp for _, smp in part])
            stale.discard(name)
            mine, events = [e for e in events if e[0] < plan_next], [e for e in events if e[0] >= plan_next]
            prog["shards"].append({
                "file": name, "items": len(part), "bytes": os.path.getsize(path), "sha256": _sha256(path),
                "plan_next": plan_next, "rejects": [e[2] for e in mine if e[1] == "reject"],
                "retries": [e[2] for e in mine if e[1] == "retry"]})
            _write_progress(out, prog)  # after the shard: a kill in between only costs regenerating it
            rep.shards.append({"file": name, "items": len(part)})
            shard_no += 1

    bar = tqdm(total=len(items), initial=start, desc=f"datagen {split}", unit="item", disable=not progress,
               file=sys.stderr)
    if not chunks:
        results = iter(())
    elif workers == 1:
        _init(cfg, split)
        results = map(_work, chunks)
    else:
        results = _pool_results(cfg, split, chunks, workers)
    pos = start
    try:
        for res_list in results:
            for res in res_list:
                rep.add(res)
                if res.sample is not None:
                    pending.append((pos, res.sample))
                    events.extend((pos, "retry", r) for r in res.retries)
                else:
                    events.append((pos, "reject", [res.task, res.reason, res.detail]))
                pos += 1
            bar.update(len(res_list))
            bar.set_postfix(skipped=sum(rep.rejects.values()))
            flush()
        flush(final=True)
    finally:
        bar.close()
    from .sources.events import EventCatalogue

    rep.missing_source_files = EventCatalogue.from_config(cfg, split).missing
    if cfg.corpora:
        from .sources.corpora import CorpusSet

        cs = CorpusSet.from_config(cfg, split)
        rep.manifest_rejects = {r: {"rows": n, "example": cs.examples.get(r, "")} for r, n in cs.rejects.items()}
    for name in stale:  # shards of an earlier, larger build in the same directory
        os.remove(os.path.join(out, name))
    rep.seconds = time.time() - t0
    write_card(out, rep, cfg)
    if os.path.exists(os.path.join(out, PROGRESS_FILE)):  # complete: the data card is the record from now on
        os.remove(os.path.join(out, PROGRESS_FILE))
    return rep


def build_split(split: str, out: str, preset: str = "ci", seed: int = 0, workers: int = 0,
                progress: bool = True, **overrides) -> BuildReport:
    """Convenience for callers such as DataConfig.build_if_missing: build one split with a preset."""
    cfg = DatagenConfig(preset=preset, seed=seed, workers=workers, **overrides)
    cfg.validate()
    return build(cfg, split, out, progress=progress)


def format_report(rep: BuildReport) -> str:
    d = rep.as_dict()
    ks = sorted({int(k) for c in d["counts"].values() for k in c})
    lines = [f"datagen build: split={rep.split} preset={rep.preset} seed={rep.seed}: {rep.written}/{rep.planned} "
             f"items in {rep.seconds:.1f} s ({rep.written / max(rep.seconds, 1e-9):.2f} items/s, "
             f"{rep.workers} workers), {len(rep.shards)} shards, {rep.bytes / 1e6:.1f} MB audio",
             f"{'task':<24}" + "".join(f"{k:>6}" for k in ks) + f"{'total':>8}{'skipped':>9}"]
    for t in sorted(set(d["counts"]) | set(d["rejects_by_task"])):
        c = d["counts"].get(t, {})
        lines.append(f"{t:<24}" + "".join(f"{c.get(str(k), 0):>6}" for k in ks) + f"{sum(c.values()):>8}"
                     f"{d['rejects_by_task'].get(t, 0):>9}")
    du = d["durations"]
    lines.append(f"clips: {du['clips']}  duration mean {du['mean']} s, min {du['min']}, max {du['max']}, "
                 f"total {du['total_hours']} h")
    lines.append(f"skipped items: {d['skipped']}" + "".join(f"\n  {r}: {n}  e.g. {d['reject_examples'][r]}"
                                                         for r, n in d["rejects"].items()))
    if d["retries"]:
        lines.append("retried attempts: " + ", ".join(f"{r}: {n}" for r, n in d["retries"].items()))
    for r, v in d["manifest_rejects"].items():
        lines.append(f"manifest rows skipped: {r}: {v['rows']}  e.g. {v['example']}")
    if d["missing_source_files"]:
        lines.append(f"source files listed by packages but missing on disk (not used): {len(d['missing_source_files'])}")
    return "\n".join(lines)
