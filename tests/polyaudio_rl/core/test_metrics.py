import json

from polyaudio_rl.core.metrics import MetricsLogger, plot_curves, read_metrics


def test_jsonl_resume_keeps_last_record_per_step_and_plots(tmp_path):
    log = MetricsLogger(tmp_path, wandb_mode="disabled")
    for s in range(1, 4):
        log.log(s, {"reward/total": 0.1 * s, "kl": 0.01 * s, "nan": float("nan")})
    log.close()
    log = MetricsLogger(tmp_path, wandb_mode="disabled")  # a resumed run re-logs step 3
    log.log(3, {"reward/total": 0.9, "kl": 0.02})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert recs[-1]["reward/total"] == 0.9 and recs[0]["nan"] is None
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_rewind_drops_the_rows_of_steps_after_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, wandb_mode="disabled")
    for s in range(1, 5):
        log.log(s, {"reward/total": 0.1 * s})
    log.log(2, {"phase": "eval_after", "eval/accuracy": 0.5})
    assert log.rewind(2) == 2  # steps 3 and 4 are lost with the learner that made them
    log.log(3, {"reward/total": 0.7})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("reward/total")) for r in rows] == [(1, 0.1), (2, 0.2), (2, None), (3, 0.7)]
