"""Datagen throughput on this machine: items/s and clips/s for each task (one process), then a parallel build.

    python benchmarks/datagen_throughput.py [--n 8] [--split bench] [--build-items 4] [--workers 0]

Per task: ``--n`` items (clip counts cycling 2-5) generated and encoded in this process after one warm-up item.
Then ``python -m datagen build`` logic with ``--build-items`` items per task on ``--workers`` processes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datagen.__main__ import load_config  # noqa: E402
from datagen.build import build, make_context  # noqa: E402
from datagen.generate import make_item  # noqa: E402
from polyaudio_rl.core.schema import TASKS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="items per task for the per-task figures")
    ap.add_argument("--split", default="bench")
    ap.add_argument("--build-items", type=int, default=4, help="items per task for the parallel build (0: skip)")
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    cfg = load_config(None, [], preset="ci", seed=123)
    ctx = make_context(cfg, a.split)
    print(f"datagen throughput, split={a.split}, {os.cpu_count()} cores, one process, {a.n} items per task")
    print(f"{'task':<24}{'items/s':>9}{'clips/s':>9}{'audio s/s':>11}{'MB/item':>9}{'skipped':>9}")
    tot_items = tot_clips = tot_t = 0.0
    for task in TASKS:
        make_item(ctx, task, 10_000)  # warm-up (soundfont, event files)
        t0 = time.perf_counter()
        res = [make_item(ctx, task, i) for i in range(a.n)]
        dt = time.perf_counter() - t0
        ok = [r.sample for r in res if r.sample is not None]
        clips = sum(len(s.clips) for s in ok)
        audio = sum(c.duration for s in ok for c in s.clips)
        mb = sum(len(c.audio) for s in ok for c in s.clips) / 1e6 / max(len(ok), 1)
        print(f"{task:<24}{len(ok) / dt:>9.2f}{clips / dt:>9.2f}{audio / dt:>11.1f}{mb:>9.2f}{a.n - len(ok):>9}")
        tot_items += len(ok)
        tot_clips += clips
        tot_t += dt
    print(f"{'all tasks':<24}{tot_items / tot_t:>9.2f}{tot_clips / tot_t:>9.2f}")
    if a.build_items:
        cfg = load_config(None, [f"items_per_task={{{a.split}: {a.build_items}}}"], preset="ci", seed=123,
                          workers=a.workers)
        with tempfile.TemporaryDirectory() as d:
            rep = build(cfg, a.split, d, progress=False)
        print(f"parallel build: {rep.written} items, {len(rep.durations)} clips in {rep.seconds:.1f} s on "
              f"{rep.workers} workers: {rep.written / rep.seconds:.2f} items/s, "
              f"{len(rep.durations) / rep.seconds:.2f} clips/s (incl. worker start-up)")
        est = 2750 / max(rep.written / rep.seconds, 1e-9)
        print(f"=> paper bench (2,750 items) at this rate: ~{est / 60:.0f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
