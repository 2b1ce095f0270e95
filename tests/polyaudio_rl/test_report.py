"""The run's web page (report.html): built from a synthetic demo-sized run directory with real generated clips; gaps
shown for missing samples and clips; the comparison page of several runs; wandb tables (offline); and the page
checked in headless Chromium: one player per clip shown, every player's source decodes, the filters change the
visible rows, a screenshot in the test's output."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from polyaudio_rl import report
from polyaudio_rl.samples import read_jsonl, samples_dir
from tests.polyaudio_rl import report_fixtures as fx


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    d = fx.demo_run(tmp_path_factory.mktemp("run") / "demo-run")
    report.build(d)
    return d


def expected_clips(run_dir: Path) -> tuple[int, int]:
    """(clips shown with a file, clips shown as a gap) by the page: one per clip of each held-out item and group."""
    held = {r["id"]: r["clips"] for r in read_jsonl(samples_dir(run_dir) / "heldout.jsonl")}
    groups = [r["clips"] for r in read_jsonl(samples_dir(run_dir) / "rollouts.jsonl") if "clips" in r]
    refs = [c for cs in [*held.values(), *groups] for c in cs]
    clips = samples_dir(run_dir) / "clips"
    present = sum(1 for c in refs if (clips / f"{c}.flac").is_file())
    return present, len(refs) - present


def test_demo_page_holds_every_table_and_stays_small(demo_dir):
    page = (demo_dir / "report.html").read_text()
    present, gaps = expected_clips(demo_dir)
    assert page.count("<audio ") == present == 96 * 2.5 + 20 * 3 and gaps == 0
    assert page.count('<tr class="item"') == 96 + 20 * 8  # held-out items + kept completions
    assert page.count('<div class="group">') == 20
    for text in ("Summary", "Held-out results per task", "Listen: held-out items", "Rollout groups kept during GRPO",
                 "data:image/png;base64,", "step 55 · policy version 54", 'id="f-task"', 'id="f-verdict"'):
        assert text in page, text
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    srcs = re.findall(r'<audio [^>]*src="([^"]+)"', page)
    assert all((demo_dir / s).is_file() and s.startswith("samples/clips/") for s in srcs)
    assert report.page_bytes(demo_dir) < 20e6


def test_rebuilt_from_the_command_line(demo_dir, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(demo_dir, d)
    (d / "report.html").unlink()
    assert report.main([str(d)]) == 0
    assert "MB with its clips" in capsys.readouterr().out and (d / "report.html").is_file()
    assert report.main([str(tmp_path / "nope")]) == 2


def test_missing_clip_and_missing_samples_still_render_with_the_gap_shown(demo_dir, tmp_path):
    d = tmp_path / "gappy"
    shutil.copytree(demo_dir, d)
    first = read_jsonl(samples_dir(d) / "heldout.jsonl")[0]["clips"][0]
    (samples_dir(d) / "clips" / f"{first}.flac").unlink()
    page = report.build(d).read_text()
    present, gaps = expected_clips(d)
    assert gaps >= 1  # every place that clip is shown (its held-out row, rollout groups with the same audio)
    assert page.count("<audio ") == present and page.count(f"clip {first} missing") == gaps
    (samples_dir(d) / "rollouts.jsonl").unlink()
    (d / "reward_curves.png").unlink()
    page = report.build(d).read_text()
    assert "no rollout samples in this run directory" in page and "picture reward_curves.png missing" in page
    shutil.rmtree(samples_dir(d))
    (d / "summary.json").unlink()
    page = report.build(d).read_text()
    assert "summary.json missing" in page and "no held-out items recorded" in page and "<audio" not in page


def test_size_bound_marker_is_shown(tmp_path):
    from polyaudio_rl.core.config.logs import LoggingConfig

    fx.rollouts(tmp_path, steps=6, cfg=LoggingConfig(rollout_sample_every=1, rollout_sample_max_mb=0.05))
    page = report.build(tmp_path).read_text()
    assert "later steps not kept" in page and 'class="gap"' in page


def test_runs_page_compares_the_answers_of_several_runs(demo_dir, tmp_path):
    other = tmp_path / "arm-b"
    shutil.copytree(demo_dir, other)
    recs = read_jsonl(samples_dir(other) / "heldout.jsonl")
    for r in recs:  # arm b: every answer after GRPO right
        if r["phase"] == "after_grpo":
            r["score"] = 1.0
    (samples_dir(other) / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    shutil.rmtree(samples_dir(other) / "clips")  # clips found in the other run's store
    out = report.write_runs_page(tmp_path / "ablations" / "ablations.html", "Ablations",
                                 {"baseline": demo_dir, "arm-b": other}, intro="<p>intro</p>")
    page = out.read_text()
    assert page.count('<tr class="item"') == 96 and page.count("<audio ") == 240 and "<p>intro</p>" in page
    assert "arm-b (after GRPO)" in page and 'href="../arm-b/report.html"' in page
    right_a = sum(1 for r in read_jsonl(samples_dir(demo_dir) / "heldout.jsonl")
                  if r["phase"] == "after_grpo" and r["score"] >= 0.5)
    assert page.count('data-verdict="right"') == right_a and page.count('data-verdict="mixed"') == 96 - right_a
    assert '<option value="mixed">' in page


def test_wandb_tables_offline(demo_dir, tmp_path, monkeypatch):
    """wandb 0.31 stores a run's table (with its media) as a run artifact, staged under WANDB_DATA_DIR until synced."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    d = tmp_path / "w"
    shutil.copytree(demo_dir, d)
    assert report.wandb_tables(d, "offline") == {"heldout_items": 96, "rollout_samples": 20}
    assert {p.name.split("_")[0] for p in (d / "wandb").rglob("*.table.json")} == {"heldout", "rollout"}
    staged = [p for p in (tmp_path / "wandb-data").rglob("*") if p.is_file()]
    tables = {}
    for p in staged:
        head = p.read_bytes()[:200]
        if head.startswith(b"{") and b'"table"' in head:
            t = json.loads(p.read_text())
            tables[len(t["data"])] = t
    held, roll = tables[96], tables[20]
    assert "audio_1" in held["columns"] and "advantages" in roll["columns"]
    audio = held["data"][0][held["columns"].index("audio_1")]
    assert audio["_type"] == "audio-file" and audio["path"].endswith(".flac")
    assert json.loads(roll["data"][0][roll["columns"].index("advantages")])  # one advantage per completion
    assert sum(1 for p in staged if p.read_bytes()[:4] == b"fLaC") >= 96


chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                              reason="chromium not installed: `make setup` installs it (apt-get install chromium)")


@chromium
def test_demo_page_in_headless_chromium(demo_dir, tmp_path):
    from tests.browser import AUDIO_DURATIONS_JS, Browser, set_filter

    d = tmp_path / "page"
    shutil.copytree(demo_dir, d)
    first = read_jsonl(samples_dir(d) / "rollouts.jsonl")[0]["clips"][0]
    (samples_dir(d) / "clips" / f"{first}.flac").unlink()  # one clip gone: a gap, not a broken player
    report.build(d)
    present, gaps = expected_clips(d)
    with Browser() as b:
        b.open(d / "report.html")
        assert b.eval("document.querySelectorAll('audio').length") == present
        assert b.eval("document.querySelectorAll('.clip').length") == present + gaps
        assert b.eval("document.querySelectorAll('.clip.gap').length") == gaps >= 1
        durations = b.eval(AUDIO_DURATIONS_JS, await_promise=True)
        assert len(durations) == present and min(durations) > 0, sorted(durations)[:5]
        rows = set_filter(b)
        assert len(rows) == 96 + 20 * 8
        counting = set_filter(b, task="counting")
        assert 0 < len(counting) < len(rows) and {t for t, _ in counting} == {"counting"}
        wrong = set_filter(b, verdict="wrong")
        assert 0 < len(wrong) < len(rows) and {v for _, v in wrong} == {"wrong"}
        both = set_filter(b, task="entailment", verdict="right")
        assert both and {tuple(r) for r in both} == {("entailment", "right")}
        assert b.eval("document.getElementById('shown').textContent") == f"{len(both)} rows shown"
        set_filter(b, task="counting")  # a rollout group with no visible completion is hidden
        groups = b.eval("Array.from(document.querySelectorAll('.group')).filter(g => g.offsetParent !== null)"
                        ".map(g => g.querySelector('h3').textContent)")
        assert len(groups) == 10 and all("counting" in g for g in groups)
        set_filter(b)
        shot = b.screenshot(tmp_path / "report_screenshot.png")
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
