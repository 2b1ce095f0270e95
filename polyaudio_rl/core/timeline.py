"""Spans of work on named lanes (one lane per actor or pool), exported in Chrome trace format.

    tl = Timeline()
    with tl.span("learner", "train", step=3):
        ...
    tl.add("rollout/actor-0", "generate", t0, t1, step=4)
    tok = tl.begin("rollout/actor-0", "generate", t0)   # a span still running (counted as busy up to now) ...
    tl.end(tok, t1, step=4)                              # ... closed when its end is known
    tl.busy_fraction("rollout/", t0, t1)        # union of the lanes' spans inside [t0, t1] / (t1 - t0)
    tl.write("RUN_DIR/timeline.json")            # open in Perfetto (ui.perfetto.dev) or chrome://tracing

Thread-safe: the GRPO driver's producer and consumer threads record into one timeline.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Span:
    lane: str
    name: str
    start: float  # time.time() seconds
    end: float
    args: dict[str, Any] = field(default_factory=dict)


class Timeline:
    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._open: dict[int, Span] = {}  # begun, not ended: busy up to now
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.origin = time.time()

    def add(self, lane: str, name: str, start: float, end: float, **args: Any) -> None:
        with self._lock:
            self._spans.append(Span(lane, name, start, max(start, end), args))

    def begin(self, lane: str, name: str, start: float | None = None, **args: Any) -> int:
        """Open a span (work in progress: :meth:`busy_fraction` counts it up to now); returns its token."""
        with self._lock:
            tok = next(self._ids)
            self._open[tok] = Span(lane, name, time.time() if start is None else start, float("inf"), args)
            return tok

    def end(self, token: int, end: float | None = None, lane: str | None = None, start: float | None = None,
            **args: Any) -> None:
        """Close an open span at ``end`` (default now); ``lane`` / ``start`` correct where the work ran, if it moved
        (a shard resent to another actor)."""
        with self._lock:
            s = self._open.pop(token)
            s.lane, s.start = lane or s.lane, s.start if start is None else start
            s.end = max(s.start, time.time() if end is None else end)
            s.args.update(args)
            self._spans.append(s)

    @contextlib.contextmanager
    def span(self, lane: str, name: str, **args: Any) -> Iterator[None]:
        tok = self.begin(lane, name, **args)
        try:
            yield
        finally:
            self.end(tok)

    def spans(self, lane_prefix: str = "") -> list[Span]:
        """Closed spans, then open ones ending now."""
        now = time.time()
        with self._lock:
            return ([s for s in self._spans if s.lane.startswith(lane_prefix)]
                    + [Span(s.lane, s.name, s.start, max(s.start, now), dict(s.args))
                       for s in self._open.values() if s.lane.startswith(lane_prefix)])

    def busy_fraction(self, lane_prefix: str, t0: float, t1: float) -> float:
        """Fraction of [t0, t1] covered by at least one span of a lane starting with ``lane_prefix``."""
        if t1 <= t0:
            return 0.0
        cuts = sorted((max(s.start, t0), min(s.end, t1)) for s in self.spans(lane_prefix) if s.end > t0 and s.start < t1)
        covered, cur_s, cur_e = 0.0, None, None
        for a, b in cuts:
            if cur_e is None or a > cur_e:
                if cur_e is not None:
                    covered += cur_e - cur_s
                cur_s, cur_e = a, b
            else:
                cur_e = max(cur_e, b)
        if cur_e is not None:
            covered += cur_e - cur_s
        return covered / (t1 - t0)

    def chrome_trace(self) -> dict[str, Any]:
        """``{"traceEvents": [...], "otherData": {"origin_unix_s": ...}}``: one thread (tid) per lane, complete events
        ("ph": "X") in microseconds since ``origin_unix_s`` (a span still open ends at the time of writing); the
        origin lets another process place its own wall-clock events (e.g. benchmarks/chaos.py's kills) on the spans."""
        spans = self.spans()
        lanes = sorted({s.lane for s in spans})
        tid = {lane: i + 1 for i, lane in enumerate(lanes)}
        events: list[dict[str, Any]] = [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid[lane], "args": {"name": lane}} for lane in lanes
        ]
        events += [{"name": s.name, "ph": "X", "pid": 1, "tid": tid[s.lane], "ts": (s.start - self.origin) * 1e6,
                    "dur": (s.end - s.start) * 1e6, "args": s.args} for s in spans]
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"origin_unix_s": self.origin}}

    def write(self, path: str | os.PathLike) -> str:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.chrome_trace(), fh)
        os.replace(tmp, path)
        return str(path)


__all__ = ["Span", "Timeline"]
