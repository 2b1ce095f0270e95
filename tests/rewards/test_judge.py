"""The judge client against a real local HTTP server speaking the OpenAI chat-completions API (FastAPI under
uvicorn, 127.0.0.1, a free port, started by the test): good, structured, slow, down, garbage, out-of-range,
flaky and structured-output-rejecting endpoints."""
from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest

from polyaudio_rl.core.config.reward import JudgeConfig
from rewards.judge import SCORE_CHOICES, JudgeClient, parse_score

_spec = importlib.util.spec_from_file_location("judge_server_helper", Path(__file__).with_name("judge_server_helper.py"))
judge_server_helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge_server_helper)
free_port = judge_server_helper.free_port


@pytest.fixture(scope="module")
def judge_server():
    with judge_server_helper.running_judge() as fake:
        yield fake


def cfg(url: str, model: str, **kw) -> JudgeConfig:
    base = dict(base_url=url, model=model, timeout_s=5.0, max_retries=2, backoff_s=0.01, max_backoff_s=0.05,
                concurrency=4)
    base.update(kw)
    return JudgeConfig(**base)


ITEM = dict(question="Which clip has the dog?", reference="Audio 2 has the dog.", n_clips=3, relevant_clips=[2])


@pytest.mark.parametrize("text,expected", [
    ("4", 4.0), (" 5\n", 5.0), ("Score: 3", 3.0), ("**4** out of 5", 4.0), ("4/5", 4.0), ('{"score": 2}', 2.0),
    ("I would rate this a 4.", 4.0), ("Rating: 4.5", 4.5), ("four", 4.0),
    ("Score: 9", None), ("0", None), ("7/10", None), ("", None), ("between 3 and 4", None), ("great answer", None),
    ('{"score": 6}', None), (None, None),
])
def test_parse_score_table(text, expected):
    assert parse_score(text)[0] == expected


def test_good_judge_two_prompts_averaged_and_cached(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "good", structured_output="none"))
    n0 = len(judge_server.bodies)

    async def run():
        right = await judge.score(answer="ANSWER-RIGHT: Audio 2.", **ITEM)
        wrong = await judge.score(answer="Audio 1.", **ITEM)
        again = await judge.score(answer="ANSWER-RIGHT: Audio 2.", **ITEM)
        await judge.aclose()
        return right, wrong, again

    right, wrong, again = asyncio.run(run())
    assert right.score == 4.5 and right.per_prompt == {"rubric_a": 5.0, "rubric_b": 4.0}  # (5 + 4) / 2
    assert right.normalized == pytest.approx(0.875)  # (4.5 - 1) / 4
    assert wrong.score == 1.5 and wrong.normalized == pytest.approx(0.125)  # (1 + 2) / 2
    assert again.score == 4.5 and again.cached == 2
    assert len(judge_server.bodies) - n0 == 4  # the repeat came from the cache
    assert judge.stats.cache_hits == 2 and judge.stats.unscored_items == 0
    # the rubric reached the server: question, reference, answer, parsimony criterion, relevant clips
    user = judge_server.bodies[n0]["messages"][-1]["content"]
    assert "Which clip has the dog?" in user and "Audio 2 has the dog." in user and "ANSWER-RIGHT" in user
    assert "arsimony" in user or "economically" in user
    assert "structured_outputs" not in judge_server.bodies[n0]


def test_structured_choice_is_sent(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "choice", structured_output="choice"))
    n0 = len(judge_server.bodies)
    res = judge.score_sync(answer="Audio 2", **ITEM)
    assert res.score == 4.0  # the server answered choices[3] == "4" for both prompts
    assert judge_server.bodies[n0]["structured_outputs"] == {"choice": SCORE_CHOICES}


def test_json_schema_mode(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "json", structured_output="json_schema"))
    n0 = len(judge_server.bodies)
    assert judge.score_sync(answer="Audio 2", **ITEM).score == 3.0
    assert judge_server.bodies[n0]["response_format"]["json_schema"]["name"] == "judge_score"


def test_auto_falls_back_when_structured_output_is_rejected(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "strict", structured_output="auto", concurrency=1))
    res = judge.score_sync(answer="ANSWER-RIGHT", **ITEM)
    assert res.score == 4.5
    assert judge.stats.structured_fallbacks == 1 and judge.stats.retries == 0


def test_down_endpoint_is_unscored_not_zero():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    judge = JudgeClient(cfg(url, "good", max_retries=2))
    t0 = time.time()
    res = judge.score_sync(answer="Audio 2", **ITEM)
    assert res.score is None and res.normalized is None
    assert "connection" in res.error and "3 attempts" in res.error
    assert judge.stats.unscored_items == 1 and judge.stats.retries == 4  # 2 retries x 2 prompts
    assert time.time() - t0 < 10


def test_injected_outage_shorter_than_the_retry_budget_only_delays_the_score(judge_server):
    """faults.judge_outage: connections are refused for the outage, the retries carry the request through it."""
    judge = JudgeClient(cfg(judge_server.url, "good", structured_output="none", max_retries=6, backoff_s=0.2,
                            max_backoff_s=0.4, concurrency=1))
    judge.start_outage(1.0)
    t0 = time.time()
    res = judge.score_sync(answer="ANSWER-RIGHT", **ITEM)
    assert res.score == 4.5 and time.time() - t0 >= 0.9  # the same score as without the outage, later
    assert judge.stats.retries >= 2 and judge.stats.errors["connection"] >= 2
    assert judge_server.bodies  # and the real server answered once the outage ended


def test_injected_outage_longer_than_the_retry_budget_leaves_the_item_unscored(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "good", structured_output="none", max_retries=1))
    judge.start_outage(30.0)
    res = judge.score_sync(answer="ANSWER-RIGHT", **ITEM)
    assert res.score is None and "connection" in res.error
    judge.end_outage()
    assert judge.score_sync(answer="ANSWER-RIGHT", **ITEM).score == 4.5


def test_slow_endpoint_times_out_bounded(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "slow", timeout_s=0.3, max_retries=1))
    t0 = time.time()
    res = judge.score_sync(answer="Audio 2", **ITEM)
    elapsed = time.time() - t0
    assert res.score is None and "timeout" in res.error
    assert judge.stats.errors["timeout"] == 4  # 2 attempts x 2 prompts, run concurrently
    assert elapsed < 2.5  # never waits for the 3 s reply


def test_garbage_reply_is_unscored(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "garbage", max_retries=1))
    res = judge.score_sync(answer="Audio 2", **ITEM)
    assert res.score is None and "bad reply" in res.error
    assert judge.stats.requests == 4 and judge.stats.errors["bad_reply"] == 4


def test_out_of_range_reply_is_rejected(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "range", max_retries=0))
    res = judge.score_sync(answer="Audio 2", **ITEM)
    assert res.score is None and "out of range: 9" in res.error


def test_flaky_endpoint_recovers_by_retrying(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "flaky", structured_output="none", max_retries=3, concurrency=1))
    res = judge.score_sync(answer="ANSWER-RIGHT", **ITEM)
    assert res.score == 4.5
    assert judge.stats.retries == 2 and judge.stats.errors["http_503"] == 2


def test_client_error_is_not_retried(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "missing", max_retries=3))
    res = judge.score_sync(answer="Audio 2", **ITEM)
    assert res.score is None and "HTTP 404" in res.error and judge.stats.retries == 0


def test_concurrency_is_bounded(judge_server):
    judge = JudgeClient(cfg(judge_server.url, "slow", timeout_s=0.4, max_retries=0, concurrency=2))
    in_flight = {"now": 0, "max": 0}

    async def run():
        orig_client, sem = judge._client()
        create = orig_client.chat.completions.create

        async def counting_create(*a, **kw):
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            try:
                return await create(*a, **kw)
            finally:
                in_flight["now"] -= 1

        orig_client.chat.completions.create = counting_create
        res = await judge.score_many([dict(answer=f"Audio {i}", **ITEM) for i in range(3)])
        await judge.aclose()
        return res

    res = asyncio.run(run())
    assert all(r.score is None for r in res)
    assert in_flight["max"] == 2  # 6 requests, at most 2 at once


def test_config_errors():
    with pytest.raises(ValueError, match="base_url is empty"):
        JudgeClient(JudgeConfig())
    with pytest.raises(ValueError, match="unknown prompt"):
        JudgeClient(JudgeConfig(base_url="http://127.0.0.1:1/v1", prompts=["nope"]))
