"""Moments of the chaos harness: each trial's plan (what is done, aimed at which phase of which step), when each
phase happened in the undisturbed reference (:class:`Profile`), and where a moment landed in the run it hit."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

KIND_WEIGHTS = {"learner": 0.3, "rollout": 0.3, "reward": 0.25, "data": 0.15}


# what a moment aims at: a checkpoint or a weight sync most often (where recovery is least rehearsed)
PHASE_WEIGHTS = {"checkpoint": 0.3, "sync": 0.3, "train": 0.1, "generate": 0.1, "score": 0.1, "any": 0.1}


# A Ray Data worker (the prompt stream's read tasks and decode actors) exists only while a pipeline runs: from the
# stream's start-up prefetch (while the actors boot) until the epoch is decoded (a small split: GRPO's first steps),
# and again after a recovery rewinds the stream. A kill of one aims at that window, not at a step: the first time the
# watcher sees the pipeline's decode actor (DECODE_TITLE, the map_batches actor pool) started — decoding or between
# batches, past its ``__init__`` — after the previous action, plus ``frac`` of STREAM_SPAN_S; the victim is a decode
# actor when one is alive, else another Ray Data worker.
STREAM_PHASE, STREAM_SPAN_S, DECODE_TITLE = "stream", 2.0, "ray::MapWorker"


# A weight sync lasts ~0.1 s at the end of a 1-2 s step here: a moment timed from the reference's offset lands beside
# it more often than in it. The harness therefore watches the learner's and the rollout actors' process titles (Ray
# names a worker after the method it runs: ``ray::LearnerWorker.sync_half``, ``ray::RolloutActor.sync``,
# ``ray::RolloutActor.receive_and_sync``) from the anchor row on, and fires when one shows a sync (the victim is still
# of the kind drawn); when none shows before the step's own row, at the reference's offset as for the other phases.
SYNC_WORKERS = ("ray::LearnerWorker.", "ray::RolloutActor.")


def in_sync(title: str) -> bool:
    """Whether a Ray worker's process title says it runs a weight-sync method (:data:`SYNC_WORKERS`)."""
    head = title.split(" ", 1)[0]
    return head.startswith(SYNC_WORKERS) and "sync" in head.split(".", 1)[1]


# timeline (lane prefix, span name) -> phase
SPAN_PHASES = [("learner", "train", "train"), ("learner", "sync: weights + probe", "sync"), ("sync", "", "sync"),
               ("rollout/", "generate", "generate"), ("reward", "score", "score"), ("data", "", "data")]


@dataclass
class Action:
    """One thing done to a run: ``kill`` (SIGKILL a worker of ``kind``) or ``sigterm`` (to the driver), aimed at
    ``phase`` of GRPO step ``step``, ``frac`` of the way through it; ``pick`` chooses among live victims."""
    what: str
    phase: str
    step: int
    frac: float
    kind: str = ""
    pick: float = 0.0


def draw_plan(rng: random.Random, steps: int, ckpt_steps: list[int], first: int, kind: str) -> list[Action]:
    """One trial's actions: one kill of a worker of ``kind`` (two in about a third of the trials, the second of a
    random kind in a later step), then in about a third of the trials a SIGTERM to the driver in a step after the
    last kill (followed by ``--resume``)."""
    n = 2 if rng.random() < 0.35 else 1
    acts: list[Action] = []
    lo = first
    for _ in range(n):
        if lo > steps:
            break
        step = rng.randint(lo, steps if len(acts) else max(lo, steps - 2))  # room left for a second kill
        phase = rng.choices(list(PHASE_WEIGHTS), weights=list(PHASE_WEIGHTS.values()))[0]
        if phase == "checkpoint":
            later = [s for s in ckpt_steps if s >= step]
            step = later[0] if later else step
            phase = phase if later else "sync"
        kind = kind if not acts else rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        # a Ray Data worker lives only while the prompt stream's pipeline runs (STREAM_PHASE); the draws are kept
        acts.append(Action("kill", STREAM_PHASE if kind == "data" else phase, step, round(rng.random(), 3), kind,
                           round(rng.random(), 3)))
        # the next action's anchor row must come after this one's (a checkpoint's anchor is its own step's row)
        lo = step + (2 if phase == "checkpoint" else 1)
    if rng.random() < 0.35 and lo <= steps - 1:
        acts.append(Action("sigterm", "any", rng.randint(lo, steps - 1), round(rng.random(), 3)))
    return acts


def plans(seed: int, trials: int, steps: int, every: int) -> list[list[Action]]:
    """Each trial's plan, from its own generator seeded by (seed, trial): trial i is the same in any invocation. The
    first victims' kinds take turns in an order shuffled by the seed, so any four trials kill each kind once."""
    ckpt_steps = [s for s in range(1, steps + 1) if (every and s % every == 0) or s == steps]
    first = 2  # from step 2 on, the trial's own pace (its step 1 against the reference's) scales the moments
    kinds = random.Random(seed).sample(sorted(KIND_WEIGHTS), len(KIND_WEIGHTS))
    return [draw_plan(random.Random(seed * 1000 + i), steps, ckpt_steps, first, kinds[i % len(kinds)])
            for i in range(trials)]


def timeline_spans(run_dir: Path, name: str = "timeline.json") -> list[tuple[str, float, float]]:
    """(phase, start, end) in wall-clock seconds of a run's ``timeline.json`` (empty when the driver wrote none)."""
    try:
        trace = json.loads((run_dir / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    origin = trace.get("otherData", {}).get("origin_unix_s")
    if origin is None:
        return []
    lanes = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    out = []
    for e in trace["traceEvents"]:
        if e["ph"] != "X":
            continue
        lane = lanes.get(e["tid"], "")
        for prefix, span, phase in SPAN_PHASES:
            if lane.startswith(prefix) and (not span or e["name"] == span):
                out.append((phase, origin + e["ts"] / 1e6, origin + (e["ts"] + e["dur"]) / 1e6))
                break
    return out


@dataclass
class Profile:
    """When things happened in the undisturbed reference: each step's row (0: the evaluation before GRPO), each
    checkpoint's completion, the timeline's phase spans."""
    rows: dict[int, float]
    ckpts: dict[int, float]
    spans: list[tuple[str, float, float]]
    ckpt_tmps: dict[int, float] = field(default_factory=dict)  # when each checkpoint's temporary directory appeared

    @classmethod
    def of(cls, events: list[tuple[str, int, float]], spans: list[tuple[str, float, float]]) -> "Profile":
        seen: dict[str, dict[int, float]] = {"row": {}, "ckpt": {}, "ckpt_tmp": {}}
        for what, step, t in events:
            seen[what].setdefault(step, t)
        return cls(seen["row"], seen["ckpt"], spans, seen["ckpt_tmp"])

    def delay(self, act: Action, pace: float = 1.0, from_tmp: bool = False) -> float:
        """Seconds from the action's anchor row to its moment: the reference's offset of the phase aimed at (its
        spans starting in the step, joined) plus ``frac`` of its length, the whole step for ``any``; times ``pace``
        (how much slower the trial runs than the reference did). ``from_tmp``: a checkpoint's moment counts from
        its temporary directory's appearance."""
        if act.phase == "checkpoint":  # from its temporary directory (or, not seen, its step's row) to its end
            start = self.ckpt_tmps.get(act.step, self.rows[act.step]) if from_tmp else self.rows[act.step]
            return pace * act.frac * max(self.ckpts.get(act.step, 0.0) - start, 0.0)
        a, b = self.rows.get(act.step - 1), self.rows.get(act.step)
        if a is None or b is None:
            return 0.0
        hits = [(s, e) for ph, s, e in self.spans if ph == act.phase and a < s <= b]
        if hits:
            s, e = min(h[0] for h in hits), max(h[1] for h in hits)
            return pace * ((s - a) + act.frac * (e - s))
        return pace * act.frac * (b - a)

    def ckpt_span(self, step: int) -> float:
        """Seconds from the step's row to its checkpoint's completion in the reference."""
        return max(self.ckpts.get(step, 0.0) - self.rows.get(step, 0.0), 0.0)

    def pace(self, events: list[tuple[str, int, float]], step: int) -> float:
        """The trial's last step before ``step`` over the reference's same step (1 when unknown), within [0.25, 4]:
        the machine's load drifts between runs."""
        rows: dict[int, float] = {}
        for what, s, t in events:
            if what == "row":
                rows[s] = t  # the latest: a step redone after a restart counts as it ran last
        k = step - 1
        if k - 1 not in rows or k not in rows or k - 1 not in self.rows or k not in self.rows:
            return 1.0
        ratio = (rows[k] - rows[k - 1]) / max(self.rows[k] - self.rows[k - 1], 1e-3)
        return min(max(ratio, 0.25), 4.0)


def landed(t: float, events: list[tuple[str, int, float]], spans: list[tuple[str, float, float]],
           ckpt_steps: Any = ()) -> str:
    """Where a moment fell in the run it hit: a checkpoint being written (from its step's row, which the save
    follows, to its completion; "never completed" when it did not), the phases whose spans contain it, and the step
    in flight (the step after the last row logged before it)."""
    rows = [(tr, s) for w, s, tr in events if w == "row" and tr <= t]
    if not rows:  # before the held-out evaluation's row: the start-up (the stream's prefetch, actors booting)
        return "start-up (before GRPO)"
    last_t, last = max(rows)
    parts = []
    if last in ckpt_steps:
        done = [tc for w, k, tc in events if w == "ckpt" and k == last and tc >= last_t]
        if not done or t <= min(done):
            parts.append(f"checkpoint {last}" + ("" if done else " (never completed)"))
    parts += sorted({ph for ph, s, e in spans if s <= t <= e})
    where = "+".join(parts) if parts else "between phases"
    return where if parts and parts[0].startswith("checkpoint") else f"{where} (step {last + 1} in flight)"


def anchor_step(act: Action) -> int:
    """The step whose metrics row an action waits for: the step before its own; a checkpoint's own step (the save
    follows the row). A kill aimed at the prompt stream waits for a Ray Data worker instead (:data:`STREAM_PHASE`)."""
    return act.step if act.phase == "checkpoint" else act.step - 1


def anchor_row(act: Action, events: list[tuple[str, int, float]], after: float,
               ckpt_steps: Any = ()) -> tuple[Action, float] | None:
    """The row an action starts from, among the rows logged after ``after`` (the previous action's moment), in log
    order: its anchor step's row, as planned; or, when the run has gone past that step without logging its row again
    — the row came before the previous action and the restart that followed resumed from a checkpoint at or after it,
    or nothing restarted at all — the first later row, with the action moved to the step in flight after it (a
    checkpoint: to the first later checkpoint step's row). None while no such row has been logged."""
    want = anchor_step(act)
    for what, step, t in sorted(events, key=lambda e: (e[2], e[1])):
        if what != "row" or t <= after or step < want:
            continue  # a row redone after a rewind, before the anchor step
        if step == want:
            return act, t
        if act.phase != "checkpoint":
            return replace(act, step=step + 1), t
        if step in ckpt_steps:
            return replace(act, step=step), t
    return None


def grpo_start(events: list[tuple[str, int, float]], default: float) -> float:
    """When GRPO started in a run: its held-out evaluation's row (step 0)."""
    return next((t for w, s, t in events if w == "row" and s == 0), default)
