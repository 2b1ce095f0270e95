"""eval.bench against real (scripted) HTTP endpoints: scoring, report, resume, failures that are not zeros."""
from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from polyaudio_rl.core.schema import write_shard
from eval.bench import evaluate, load_bench, read_results
from eval.report import judge_to_100, summarize
from polyaudio_rl.core.config import EvalConfig, JudgeConfig

_spec = importlib.util.spec_from_file_location("eval_http_helper", Path(__file__).with_name("eval_http_helper.py"))
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

FAST = dict(max_retries=2, backoff_s=0.01, timeout_s=20.0, concurrency=3)
JUDGE = JudgeConfig(max_retries=1, backoff_s=0.01, timeout_s=20.0)


@pytest.fixture
def bench_dir(tmp_path, sample_factory):
    samples = []
    for i, task in enumerate(["comparison", "comparison", "odd_one_out", "odd_one_out"]):
        s = sample_factory(f"bench-{task}-{i}", durations=(0.5, 0.7, 0.4)[: 2 + i % 2])
        s.task, s.split = task, "bench"
        samples.append(s)
    d = tmp_path / "bench"
    d.mkdir()
    write_shard(str(d / "bench-00000.parquet"), samples)
    return d


def run(data, url, out, **kw):
    cfg = EvalConfig(**{**FAST, **kw.pop("eval", {})})
    return asyncio.run(evaluate(str(data), url, url, str(out), cfg, JUDGE, "policy", "judge", progress=False, **kw))


def test_scores_reports_and_resumes(bench_dir, tmp_path):
    out = tmp_path / "out"
    with helper.running_server() as srv:
        rep = run(bench_dir, srv.url, out)
        calls = srv.policy_calls()
        rep2 = run(bench_dir, srv.url, out)  # resume: nothing left to do
        assert srv.policy_calls() == calls == 4
        first = srv.chat_bodies[0]
    # each item: the mean of two paraphrased judge prompts
    assert all(set(r["judge_per_prompt"]) == {"rubric_a", "rubric_b"} for r in read_results(out / "results.jsonl").values())
    parts = first["messages"][0]["content"]
    assert [p["type"] for p in parts[:-1]] == ["input_audio"] * (len(parts) - 1) and parts[-1]["type"] == "text"
    ov = rep["overall"]
    assert (ov["items"], ov["scored"], ov["failed"]) == (4, 4, 0)
    assert ov["judge_mean"] == 4.0 and ov["judge_100"] == 75.0 and ov["judge_x20"] == 80.0
    assert ov["rule_acc"] == 100.0  # "Audio 1." is the key's clip
    assert list(rep["tasks"]) == ["comparison", "odd_one_out"]
    assert rep2["overall"] == ov
    for name in ("report.json", "report.md", "chart.png", "results.jsonl", "run.json"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "| PolyAudio-Bench | 75.0 | 4.00 | 100.0 | 4/4 | 0 |" in md and "| Odd-one-out |" in md
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    page = (out / "report.html").read_text()  # every item with a player per clip (3 + 2 + 3 + 2), clips stored once
    assert page.count("<audio ") == 10 and page.count('<tr class="item"') == 4 and "report.html" in md
    assert page.count('data-verdict="right"') == 4 and "✓ right" in page
    assert len(list((out / "clips").iterdir())) == len({c.audio for s in load_bench(str(bench_dir)).samples
                                                        for c in s.clips})
    with pytest.raises(ValueError, match="differs in protocol"):
        with helper.running_server() as srv:
            run(bench_dir, srv.url, out, protocol="concat")


def test_endpoint_down_items_fail_after_bounded_retries_then_resume(bench_dir, tmp_path):
    out = tmp_path / "out"
    with helper.running_server() as srv:
        srv.policy_mode = "down"
        rep = run(bench_dir, srv.url, out)
        assert srv.policy_calls() == 4 * 3  # 1 try + 2 retries per item
        ov = rep["overall"]
        assert (ov["scored"], ov["failed"], ov["failed_by_stage"]) == (0, 4, {"policy": 4})
        assert ov["judge_100"] is None and ov["rule_acc"] is None  # failed items are not zeros
        assert "gave up after 3 attempts: HTTP 503: replica unavailable" in rep["failed_items"][0]["error"]
        assert "Failed items are excluded from the means" in (out / "report.md").read_text()
        srv.policy_mode = "answer"
        rep = run(bench_dir, srv.url, out)  # the rerun retries the failed items
    assert (rep["overall"]["scored"], rep["overall"]["failed"]) == (4, 0)


def test_refused_request_and_unscorable_judge(bench_dir, tmp_path):
    with helper.running_server() as srv:
        srv.policy_mode = "reject"
        rep = run(bench_dir, srv.url, tmp_path / "a")
        assert srv.policy_calls() == 4  # a 400 is not retried
        assert "HTTP 400: audio part 1: clip lasts 31.00 s" in rep["failed_items"][0]["error"]
        page = (tmp_path / "a" / "report.html").read_text()  # failed items: the reason instead of an answer
        assert page.count('data-verdict="none"') == 4 and "failed (policy): HTTP 400" in page
        srv.policy_mode, srv.judge_reply = "answer", "I would rather not say"
        rep = run(bench_dir, srv.url, tmp_path / "b")
    assert rep["overall"]["failed_by_stage"] == {"judge": 4} and rep["overall"]["judge_mean"] is None
    rec = next(iter(read_results(tmp_path / "b" / "results.jsonl").values()))
    assert rec["status"] == "failed" and rec["answer"] == "Audio 1." and rec["judge_score"] is None


def test_concat_protocol_sends_one_audio_with_hint(bench_dir, tmp_path):
    with helper.running_server() as srv:
        rep = run(bench_dir, srv.url, tmp_path / "c", protocol="concat")
        bodies = [b for b in srv.chat_bodies if b["model"] == "policy"]
    assert rep["meta"]["protocol"] == "concat" and rep["overall"]["scored"] == 4
    for b in bodies:
        parts = b["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["input_audio", "text"]
        assert "separated by 2 seconds of silence" in parts[-1]["text"]


def test_bad_rows_are_counted(bench_dir, tmp_path, sample_factory):
    bad = sample_factory("bench-bad-0")
    bad.task = "not_a_task"
    write_shard(str(bench_dir / "bench-00001.parquet"), [bad])
    with helper.running_server() as srv:
        rep = run(bench_dir, srv.url, tmp_path / "d")
    assert rep["overall"]["bad_rows"] == 1 and "unknown task 'not_a_task'" in rep["bad_rows"][0]["error"]
    assert rep["overall"]["scored"] == 4


def test_summarize_hand_computed():
    class S:  # the fields summarize reads
        def __init__(self, id, task):
            self.id, self.task = id, task

    samples = [S("a", "counting"), S("b", "counting"), S("c", "needle_qa"), S("d", "needle_qa")]
    recs = {"a": {"status": "ok", "judge_score": 5.0, "rule_score": 1.0},
            "b": {"status": "ok", "judge_score": 3.0, "rule_score": 0.0},
            "c": {"status": "ok", "judge_score": 1.0, "rule_score": 0.5},
            "d": {"status": "failed", "stage": "policy", "error": "x", "id": "d", "task": "needle_qa"}}
    rep = summarize(recs, samples)
    t = rep["tasks"]
    assert list(t) == ["needle_qa", "counting"]  # Table 2 / TASKS order
    assert (t["counting"]["judge_mean"], t["counting"]["judge_100"], t["counting"]["rule_acc"]) == (4.0, 75.0, 50.0)
    assert (t["needle_qa"]["judge_100"], t["needle_qa"]["rule_acc"], t["needle_qa"]["failed"]) == (0.0, 50.0, 1)
    assert rep["overall"]["judge_100"] == 37.5  # mean over tasks
    assert rep["overall"]["overall_micro"]["judge_100"] == 50.0  # mean over items: (5+3+1)/3 = 3
    assert [judge_to_100(x) for x in (1, 3, 5)] == [0.0, 50.0, 100.0]
