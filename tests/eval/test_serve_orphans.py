"""No orphans: ``python -m eval.serve`` as a real process (vLLM engines in their own EngineCore processes, as vLLM
runs by default), killed in the ways a shared cluster kills things. Every process below it — Ray, Serve replicas,
vLLM EngineCore — is recorded by pid tree beforehand and must be gone 30 s after its owner dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from polyaudio_rl.core.procguard import die_with_parent, guard_children
from tests.http_server import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "orphan-test-key-5b0f"
GRACE_S = 30.0


def alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs, timeout=GRACE_S):
    deadline = time.monotonic() + timeout
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [(p.pid, " ".join(p.cmdline())[:120]) for p in alive(procs)]


def title(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def replicas(root, deployment="LLMServer:polyaudio"):
    return [p for p in alive(root.children(recursive=True)) if f"ServeReplica:polyaudio-eval:{deployment}" in title(p)]


def start_serve(tiny_ckpt, tmp_path, name):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "POLYAUDIO_API_KEY": KEY}
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eval.serve", "--policy", tiny_ckpt, "--judge", tiny_ckpt,
                             "--port", str(port), "-o", "ray_num_cpus=6", "-o", "serve.shutdown_timeout_s=20"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        try:
            r = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                           json={"model": "polyaudio", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            if r.status_code == 200:
                return proc, url, tmp_path / f"{name}.log"
        except httpx.HTTPError:
            pass
        time.sleep(3)
    proc.kill()
    pytest.fail("eval.serve did not answer within 420 s:\n" + (tmp_path / f"{name}.log").read_text()[-3000:])


def kill_tree(procs):
    for p in alive(procs):
        try:
            p.kill()
        except psutil.Error:
            pass


def test_procguard_kills_a_child_whose_parent_was_sigkilled(tmp_path):
    """Unit level: parent P starts a multiprocessing child C (guarded) and is SIGKILLed; C dies within seconds."""
    script = tmp_path / "tree.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from polyaudio_rl.core.procguard import guard_process_tree\n"
        "def child():\n    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    guard_process_tree()\n"
        "    c = mp.get_context('spawn').Process(target=child); c.start()\n"
        "    print(c.pid, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.0)
    parent.kill()
    parent.wait()
    assert wait_gone([child], timeout=10) == []
    assert die_with_parent() in (True, False) and guard_children() in (True, False)  # idempotent in this process


def test_reaper_kills_what_a_sigkilled_owner_left_even_outside_its_session():
    """An unguarded grandchild in its own session (like Ray's dashboard agent) outlives a SIGKILLed owner; the
    reaper the owner started kills it."""
    code = (f"import sys, subprocess, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from polyaudio_rl.core.procguard import start_reaper\n"
            "start_reaper(); c = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
            "print(c.pid, flush=True); time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    orphan = psutil.Process(int(owner.stdout.readline()))
    time.sleep(2.5)  # the reaper records the tree every second
    owner.kill()
    owner.wait()
    assert wait_gone([orphan], timeout=15) == []


def test_sigkilled_replica_leaves_nothing_and_one_sigint_stops_serve_during_the_restart(tiny_ckpt, tmp_path):
    proc, url, log = start_serve(tiny_ckpt, tmp_path, "restart")
    root = psutil.Process(proc.pid)
    try:
        (replica,) = replicas(root)
        below = replica.children(recursive=True)
        names = [title(p) for p in below]
        print("processes under the policy replica:", names)
        replica.kill()  # SIGKILL, as the OOM killer would
        left = wait_gone([replica, *below])
        assert left == [], f"left behind by the SIGKILLed replica: {left}"

        # Serve restarts the replica; one SIGINT while it does stops eval.serve.
        deadline = time.monotonic() + 120
        while not [p for p in replicas(root) if p.pid != replica.pid] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [p for p in replicas(root) if p.pid != replica.pid], "Serve did not restart the replica"
        tree = alive(root.children(recursive=True))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=90)
        print(f"eval.serve exited {rc} {time.monotonic() - t0:.1f} s after one SIGINT")
        left = wait_gone(tree)
        assert left == [], f"left behind after SIGINT: {left}"
        text = log.read_text()
        assert "stopping Serve and Ray" in text and KEY not in text
    finally:
        kill_tree([root, *root.children(recursive=True)] if proc.poll() is None else [])


def test_sigkilled_eval_serve_leaves_no_process_of_its_own(tiny_ckpt, tmp_path):
    proc, url, log = start_serve(tiny_ckpt, tmp_path, "sigkill")
    root = psutil.Process(proc.pid)
    tree = alive(root.children(recursive=True))
    engines = [p for p in tree if "EngineCore" in title(p) or "VLLM" in title(p)]
    print(f"{len(tree)} processes under eval.serve; engine processes: {[title(p)[:60] for p in engines]}")
    try:
        proc.kill()
        proc.wait()
        left = wait_gone(tree)
        assert left == [], f"left behind by the SIGKILLed eval.serve: {left}"
    finally:
        kill_tree(tree)
