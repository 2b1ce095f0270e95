"""Timeline spans and busy fractions (polyaudio_rl/core/timeline.py): hand-computed unions, open spans."""
import time

import pytest

from polyaudio_rl.core.timeline import Timeline


@pytest.mark.parametrize("spans, window, want", [
    ([(0, 2), (1, 3)], (0, 4), 3 / 4),  # overlapping spans count once
    ([(0, 1), (2, 3)], (0, 4), 2 / 4),
    ([(-5, 1), (3, 10)], (0, 4), 2 / 4),  # cut to the window
    ([(5, 6)], (0, 4), 0.0),
])
def test_busy_fraction_union_inside_the_window(spans, window, want):
    tl = Timeline()
    for a, b in spans:
        tl.add("rollout/actor-0", "generate", a, b)
    tl.add("learner", "train", 0, 4)  # another lane: not counted under "rollout/"
    assert tl.busy_fraction("rollout/", *window) == pytest.approx(want)


def test_open_span_is_busy_until_it_ends_and_can_move_lane():
    tl = Timeline()
    t0 = time.time()
    tok = tl.begin("rollout/actor-0", "generate", t0 - 2.0, step=3)
    now = time.time()
    assert tl.busy_fraction("rollout/", t0 - 4.0, now) == pytest.approx(2.0 / (now - t0 + 4.0), rel=1e-3)
    assert tl.busy_fraction("rollout/actor-1", t0 - 4.0, now) == 0.0
    tl.end(tok, t0 - 1.0, lane="rollout/actor-1", start=t0 - 1.5)  # resent: it ran on actor 1 from t0 - 1.5
    assert tl.busy_fraction("rollout/actor-0", t0 - 4.0, t0) == 0.0
    assert tl.busy_fraction("rollout/actor-1", t0 - 4.0, t0) == pytest.approx(0.5 / 4.0)
    (s,) = tl.spans("rollout/")
    assert s.args == {"step": 3} and s.end == t0 - 1.0
    trace = tl.chrome_trace()["traceEvents"]
    assert [e["args"]["name"] for e in trace if e["ph"] == "M"] == ["rollout/actor-1"]


def test_span_context_is_open_while_it_runs():
    tl = Timeline()
    with tl.span("learner", "train"):
        assert len(tl.spans("learner")) == 1  # visible (ending now) before it closes
        time.sleep(0.01)
    (s,) = tl.spans("learner")
    assert s.end - s.start >= 0.01


def test_chrome_trace_carries_its_origin_so_wall_clock_events_can_be_placed():
    tl = Timeline()
    tl.add("learner", "train", tl.origin + 2.0, tl.origin + 3.5)
    trace = tl.chrome_trace()
    (ev,) = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    start = trace["otherData"]["origin_unix_s"] + ev["ts"] / 1e6
    assert start == pytest.approx(tl.origin + 2.0) and ev["dur"] == pytest.approx(1.5e6)
