"""Rollout samples and held-out answers kept in the run directory, for people to listen to (the run's page,
:mod:`polyaudio_rl.report`, and wandb tables).

Layout (``RUN_DIR/samples/``)::

    rollouts.jsonl   one line per kept GRPO group, appended as the run goes (see :meth:`RolloutSampler.record`)
    heldout.jsonl    one line per held-out item and phase (after_sft, after_grpo): question, reference, answer, score
    clips/<sha>.flac every clip once, named by its content hash (16 kHz, 16-bit FLAC); records hold the hashes

A rollout record::

    {"step": 7, "policy_version": 6, "group_id": "7:113:pref-counting-000012",
     "sample_id": "...", "task": "counting", "question": "...", "reference": "...", "clips": ["3fa1...", ...],
     "weights": {"correctness": 1.0, ...}, "note": "",
     "completions": [{"text": "3.", "tokens": 3, "rewards": {"correctness": 1.0, ...}, "total": 1.0,
                      "advantage": 0.93}, ...]}

``advantage`` is the value the learner trained with (None when the group was not trained on: zero reward spread
under dynamic sampling, a stale or partly unscored group; ``note`` says which). Every
``logging.rollout_sample_every`` steps (steps 1, 1+N, ...) ``logging.rollout_sample_groups`` groups are kept, one per
task first. Resumable: a resumed run drops the records of steps after its checkpoint (they are redone) and never
writes a step twice. Bounded: once ``samples/`` holds ``logging.rollout_sample_max_mb``, later steps are skipped and
one ``{"step": s, "skipped": ...}`` line says so.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from .core.config.logs import LoggingConfig
from .core.prompts import render_question
from .core.webpage import ClipStore, dir_bytes

SAMPLE_RATE = 16000
ROLLOUTS = "rollouts.jsonl"
HELDOUT = "heldout.jsonl"


def samples_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "samples"


def clip_store(run_dir: str | Path) -> ClipStore:
    return ClipStore(samples_dir(run_dir) / "clips")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a torn line (a crash mid-write) is skipped; a missing file is empty."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _rewrite(path: Path, records: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def pick_groups(tasks: Sequence[str], k: int) -> list[int]:
    """Indices of ``k`` groups: the first of each task in batch order, then the rest in order."""
    first, seen = [], set()
    for i, t in enumerate(tasks):
        if t not in seen:
            seen.add(t)
            first.append(i)
    rest = [i for i in range(len(tasks)) if i not in set(first)]
    return sorted((first + rest)[:k])


def advantages_by_group(train_items: Sequence[Any]) -> dict[str, list[float]]:
    """The advantages the learner trains with, per group id, in completion order."""
    out: dict[str, list[float]] = {}
    for it in train_items:
        out.setdefault(it.group_id, []).append(float(it.advantage))
    return out


class RolloutSampler:
    """Keeps a few scored groups every ``cfg.rollout_sample_every`` steps in ``RUN_DIR/samples/rollouts.jsonl``.
    Call it where a step's scored groups and their advantages are known: ``sampler(step, batch, train_items)``."""

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, resume_step: int | None = None):
        self.cfg = cfg
        self.dir = samples_dir(run_dir)
        self.path = self.dir / ROLLOUTS
        self.clips = clip_store(run_dir)
        recs = read_jsonl(self.path)
        if resume_step is not None and any(r.get("step", 0) > resume_step for r in recs):
            recs = [r for r in recs if r.get("step", 0) <= resume_step]  # redone after the checkpoint
            _rewrite(self.path, recs)
        self.steps = {int(r["step"]) for r in recs if "step" in r}
        self.size = dir_bytes([self.dir])
        self.full = any("skipped" in r for r in recs)

    def wants(self, step: int) -> bool:
        every = self.cfg.rollout_sample_every
        return bool(every) and self.cfg.rollout_sample_groups > 0 and (step - 1) % every == 0 \
            and step not in self.steps

    def __call__(self, step: int, batch: Any, train_items: Sequence[Any]) -> int:
        """The driver's hook: ``batch`` a :class:`~polyaudio_rl.driver.RolloutBatch`, ``train_items`` the items
        with their advantages. Returns how many groups were kept."""
        if not self.wants(step):
            return 0
        try:
            return self.record(step, batch.items, batch.groups, batch.scores.groups, advantages_by_group(train_items),
                               weights=dict(getattr(batch.scores, "weights", {}) or {}))
        except OSError as exc:  # a full disk or a lost mount ends the samples, never the training run
            print(f"[samples] rollout samples stopped at step {step}: {exc}", file=sys.stderr)
            self.cfg = dataclasses.replace(self.cfg, rollout_sample_every=0)
            return 0

    def record(self, step: int, items: Sequence[Any], groups: Sequence[Any], scores: Sequence[Any],
               advantages: dict[str, list[float]], weights: dict[str, float] | None = None) -> int:
        """Append the chosen groups of ``step``: ``items`` PromptItems (prompt with 16 kHz clips, sample),
        ``groups`` RolloutGroups, ``scores`` GroupScores (one per item)."""
        if not self.wants(step):
            return 0
        if self.full or self.size > self.cfg.rollout_sample_max_mb * 1e6:
            if not self.full:
                self._append({"step": step, "skipped": f"samples/ reached logging.rollout_sample_max_mb="
                                                      f"{self.cfg.rollout_sample_max_mb:g}; later steps not kept"})
                self.full = True
            self.steps.add(step)
            return 0
        picked = pick_groups([it.sample.task for it in items], self.cfg.rollout_sample_groups)
        for i in picked:
            self._append(self._group_record(step, items[i], groups[i], scores[i], advantages, weights or {}))
        self.steps.add(step)
        return len(picked)

    def _group_record(self, step: int, item: Any, grp: Any, gs: Any, advantages: dict[str, list[float]],
                      weights: dict[str, float]) -> dict[str, Any]:
        s = item.sample
        refs = [self._put(a) for a in item.prompt.audios]
        adv = advantages.get(grp.group_id)
        note = "" if adv is not None else "not trained on (zero reward spread, stale or partly unscored group)"
        comps = []
        for j, c in enumerate(grp.completions):
            comps.append({
                "text": c.text[: self.cfg.completion_max_chars], "tokens": len(c.token_ids),
                "rewards": {k: _num(v[j]) if j < len(v) else None for k, v in gs.components.items()},
                "total": _num(gs.total[j]) if j < len(gs.total) else None,
                "advantage": adv[j] if adv is not None and j < len(adv) else None,
            })
        return {"step": step, "policy_version": int(grp.policy_version), "group_id": grp.group_id, "sample_id": s.id, "task": s.task,
                "question": render_question(s.question, s.choices), "reference": s.answer, "clips": refs,
                "weights": weights, "note": note, "completions": comps}

    def _put(self, wave: Any) -> str:
        before = self.clips.bytes_written
        ref = self.clips.put_array(wave, SAMPLE_RATE)
        self.size += self.clips.bytes_written - before
        return ref

    def _append(self, rec: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec) + "\n"
        with self.path.open("a+b") as fh:
            if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                line = "\n" + line  # a line torn by a crash stays alone (and is skipped when read)
            fh.write(line.encode())
        self.size += len(line.encode())


def record_heldout(run_dir: str | Path, phase: str, prompts: Sequence[Any], answers: Sequence[dict[str, Any]]) -> Path:
    """Keep each held-out item's answer of ``phase`` (``after_sft`` / ``after_grpo``) with its question, reference
    and clips: ``prompts`` the evaluated MultiAudioPrompts, ``answers`` one ``{"id", "answer", "score"}`` each (the
    held-out evaluation's ``items``). A phase recorded again (a resumed run) replaces its earlier lines."""
    d = samples_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / HELDOUT
    old = [r for r in read_jsonl(path) if r.get("phase") != phase]
    store = clip_store(run_dir)
    by_id = {a["id"]: a for a in answers}
    new = []
    for p in prompts:
        s = p.sample
        a = by_id.get(p.sample_id, {})
        new.append({"phase": phase, "id": p.sample_id, "task": s.task if s else "",
                    "question": render_question(s.question, s.choices) if s else "",
                    "reference": s.answer if s else "", "clips": [store.put_array(w, SAMPLE_RATE) for w in p.audios],
                    "answer": a.get("answer"), "score": _num(a.get("score"))})
    _rewrite(path, old + new)
    return path
