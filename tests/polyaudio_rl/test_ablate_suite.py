"""The starter ablation suite without training: its configs state only what they change, the shared SFT flags, the
report's Table 6 and checks on hand-written run records, and the runner recording a fast-failing run and going on."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from polyaudio_rl import ablate
from polyaudio_rl.ablate_report import checks, config_rows, run_row, table6, write_report
from polyaudio_rl.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_suite_configs_state_only_what_they_change(monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = ablate.suite_configs("starter")
    assert [Path(p).stem for p in paths] == ["correctness_only", "plus_parsimony", "plus_consistency", "paper_mix",
                                             "grpo_only"]
    w = {Path(p).stem: load_config(p, []).reward.weights for p in paths}
    assert w["correctness_only"] == {"correctness": 1.0, "parsimony": 0.0, "consistency": 0.0, "format": 0.0}
    assert w["plus_parsimony"]["parsimony"] == 0.2 and w["plus_consistency"]["consistency"] == 0.1
    assert w["paper_mix"] == w["grpo_only"] == {"correctness": 1.0, "parsimony": 0.2, "consistency": 0.1, "format": 0.1}
    cfg = load_config(paths[0], [])
    assert cfg.reward.clip_set_credit == "recall" and cfg.data.answer_tag and cfg.data.preset == "starter_ablation"
    assert load_config(paths[-1], []).sft.epochs == 0 and cfg.sft.epochs > 0
    for p in [*paths, *map(str, (ROOT / "configs" / "ablations").glob("*.yaml"))]:
        body = [l for l in Path(p).read_text().splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert body[0].startswith("include:") and len(body) <= 8, p  # an include and the few keys it changes
    with pytest.raises(ValueError, match="unknown suite"):
        ablate.suite_configs("paper")


def test_shared_sft_flags():
    rec = {"sft": True}
    assert ablate.run_flags(rec, ["--quiet"], True, "R/sft/checkpoints/step-8") == [
        "--quiet", "--init-adapter", "R/sft/checkpoints/step-8"]
    assert ablate.run_flags(rec, [], True, None) == []                      # the first run trains the SFT
    assert ablate.run_flags({"sft": False}, [], True, "ck") == []           # grpo_only: no SFT
    assert ablate.run_flags(rec, [], False, "ck") == []                     # --configs runs: each its own
    assert ablate.run_flags(rec, ["--skip-sft"], True, "ck") == ["--skip-sft"]


def _rec(name, before, after, **m):
    ev = {"accuracy": after, "n": 64, "irrelevant_clip_rate": m.get("irr"), "paraphrase_agreement": m.get("agree"),
          "format_rate": 1.0, "mean_length": 12.0,
          "controls": {"silence": {"accuracy": m.get("sil"), "n": 64, "chance": 0.125},
                       "shuffle": {"accuracy": m.get("shu"), "n": 64}}}
    return {"name": name, "config": f"{name}.yaml", "status": "ok", "sft": name != "grpo_only",
            "weights": {"correctness": 1.0}, "eval_before": {"accuracy": before}, "eval_after": ev, "chance": 0.125}


def test_report_table6_and_checks_on_hand_written_records(tmp_path):
    results = [_rec("correctness_only", 0.5, 0.6, irr=0.5, agree=0.6, sil=0.2, shu=0.55),
               _rec("plus_parsimony", 0.5, 0.7, irr=0.25, agree=0.7),
               _rec("plus_consistency", 0.5, 0.65, irr=0.5, agree=0.75),
               _rec("paper_mix", 0.5, 0.69, irr=0.2, agree=0.8),
               _rec("grpo_only", 0.0, 0.1, irr=0.0, agree=0.0),
               {"name": "broken", "config": "b.yaml", "status": "failed", "error": "RuntimeError: boom"}]
    write_report(tmp_path, [r["config"] for r in results], results, ["seed=1"])
    doc = json.loads((tmp_path / "ablations.json").read_text())
    assert doc["table6"] == {"LoRA SFT": 0.5, "SFT + GRPO": 0.69, "GRPO only": 0.1}
    assert doc["runs"]["plus_parsimony"]["irrelevant_clip_rate"] == 0.25 and doc["runs"]["broken"]["status"] == "failed"
    got = {c["check"]: (c["value"], c["met"]) for c in doc["checks"]}
    assert got["parsimony"] == (pytest.approx(0.25), True)       # 0.5 - 0.25 >= 0.2
    assert got["consistency"] == (pytest.approx(0.15), True)     # 0.75 - 0.6 >= 0.1
    assert got["paper_mix"] == (pytest.approx(-0.01), True)      # 0.69 - 0.7 >= -0.02
    assert got["table6"] == (pytest.approx(0.59), True)
    assert got["silence:correctness_only"] == (pytest.approx(0.075), True)
    assert got["shuffle:correctness_only"] == (pytest.approx(0.05), True)
    md = (tmp_path / "ablations.md").read_text()
    assert "| broken | failed: RuntimeError: boom |" in md and "| LoRA SFT | 0.500 |" in md
    assert (tmp_path / "ablations.png").stat().st_size > 5000
    worse = [_rec("correctness_only", 0.5, 0.6, irr=0.3), _rec("plus_parsimony", 0.5, 0.6, irr=0.2)]
    assert checks(table_runs(worse))[0]["met"] is False


def _repeat(rec, k):
    return {**rec, "name": ablate.repeat_name(rec["name"], k), "config_name": rec["name"], "repeat": k}


def test_repeated_runs_are_read_as_means_with_their_spread(tmp_path):
    """Two runs per configuration (other sampling seeds): Table 6 and the checks read the means. By the first runs
    alone paper_mix would pass (0.72 − 0.7 ≥ −0.02); by the means it misses (0.56 − 0.71)."""
    pairs = {"correctness_only": [(0.6, 0.5, 0.6), (0.4, 0.3, 0.8)],      # (accuracy, irrelevant, agreement)
             "plus_parsimony": [(0.7, 0.4, 0.7), (0.5, 0.0, 0.5)],
             "plus_consistency": [(0.6, 0.5, 0.75), (0.82, 0.5, 0.95)],
             "paper_mix": [(0.72, 0.2, 0.8), (0.4, 0.2, 0.8)],
             "grpo_only": [(0.1, 0.0, 0.0), (0.3, 0.0, 0.0)]}
    results = [_repeat(_rec(n, 0.5, acc, irr=irr, agree=ag), k) for n, runs in pairs.items()
               for k, (acc, irr, ag) in enumerate(runs)]
    results[3] = {**results[3], "status": "failed", "error": "RuntimeError: boom"}  # plus_parsimony@1 failed
    write_report(tmp_path, [f"{n}.yaml" for n in pairs], results, ["seed=0"])
    doc = json.loads((tmp_path / "ablations.json").read_text())
    assert list(doc["runs"]) == [x for n in pairs for x in (n, f"{n}@1")]  # each configuration's repeats together
    c = doc["configs"]
    assert c["correctness_only"]["n"] == 2 and c["correctness_only"]["accuracy"] == pytest.approx(0.5)
    assert c["correctness_only"]["accuracy_std"] == pytest.approx(0.141421, abs=1e-6)   # sqrt(0.02)
    assert c["plus_parsimony"]["n"] == 1 and c["plus_parsimony"]["irrelevant_clip_rate"] == pytest.approx(0.4)
    assert c["plus_parsimony"]["accuracy_std"] is None                                   # one finished run
    assert doc["table6"] == {"LoRA SFT": 0.5, "SFT + GRPO": pytest.approx(0.56), "GRPO only": pytest.approx(0.2)}
    got = {x["check"]: (x["value"], x["met"]) for x in doc["checks"]}
    assert got["parsimony"] == (pytest.approx(0.0), False)       # 0.4 - 0.4 (the failed repeat is not averaged)
    assert got["consistency"] == (pytest.approx(0.15), True)     # 0.85 - 0.7
    assert got["paper_mix"] == (pytest.approx(-0.15), False)     # 0.56 - 0.71 (plus_consistency's mean)
    se = {x["check"]: (x["se"], x["decided"]) for x in doc["checks"] if x["check"] in ("parsimony", "consistency",
                                                                                        "paper_mix", "table6")}
    assert se["parsimony"] == (None, None)                        # plus_parsimony has one finished run
    # consistency: both std sqrt(0.02), n 2: se = sqrt(0.01 + 0.01) = 0.1414; |0.15 - 0.1| < 2 se: undecided
    assert se["consistency"] == (pytest.approx(0.141421, abs=1e-6), False)
    # paper_mix: std 0.2263 (0.72, 0.4) and 0.1556 (0.6, 0.82): se = sqrt(0.0512 / 2 + 0.0242 / 2) = 0.194165
    assert se["paper_mix"] == (pytest.approx(0.194165, abs=1e-6), False)
    # table6: 0.56 - 0.2 = 0.36 from 0; grpo_only std sqrt(0.02): se = sqrt(0.0256 + 0.01) = 0.18868 -> 0.36 < 0.377
    assert se["table6"] == (pytest.approx(0.188680, abs=1e-6), False)
    sure = [_repeat(_rec(n, 0.5, acc, irr=irr), k) for n, runs in
            {"correctness_only": [(0.5, 0.6), (0.5, 0.62)], "plus_parsimony": [(0.7, 0.1), (0.7, 0.12)]}.items()
            for k, (acc, irr) in enumerate(runs)]
    runs = {r["name"]: run_row(r) for r in sure}
    pars = checks(config_rows(sure, runs))[0]  # 0.61 - 0.11 = 0.5, se = sqrt(0.0001 + 0.0001) = 0.01414: decided
    assert (pars["value"], pars["se"], pars["decided"]) == (pytest.approx(0.5), pytest.approx(0.014142, abs=1e-6), True)
    md = (tmp_path / "ablations.md").read_text()
    assert "| consistency | paraphrase_agreement: plus_consistency − correctness_only ≥ 0.1 | 0.150 ± 0.141 | yes | NO |" in md
    assert "| correctness_only | 2 | 0.500 ± 0.141 |" in md and "| plus_parsimony@1 | failed: RuntimeError: boom |" in md


def test_repeats_run_each_configuration_with_other_sampling_seeds(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablate, "run_one", lambda name, config, run_dir, overrides, flags: calls.append(
        (name, run_dir.name, [o for o in overrides if o.startswith("rollout.seed")], flags)) or {"status": "ok"})
    monkeypatch.setattr(ablate, "shared_sft", lambda run_dir: f"{run_dir.name}/sft/ckpt")
    plan = [({"name": n, "config": f"{n}.yaml", "judge": False, "sft": n != "grpo_only"}, None)
            for n in ("correctness_only", "grpo_only")]
    results = []
    a = argparse.Namespace(skip_sft=False, quiet=True, judge_url="", suite="starter", overrides=["seed=1"], repeats=3)
    ablate.execute(plan, results, a, tmp_path, _NoCluster())
    assert calls == [
        ("correctness_only", "correctness_only", ["rollout.seed=0"], ["--quiet"]),   # trains the shared SFT
        ("correctness_only@1", "correctness_only@1", ["rollout.seed=1"], ["--quiet", "--init-adapter",
                                                                          "correctness_only/sft/ckpt"]),
        ("correctness_only@2", "correctness_only@2", ["rollout.seed=2"], ["--quiet", "--init-adapter",
                                                                          "correctness_only/sft/ckpt"]),
        ("grpo_only", "grpo_only", ["rollout.seed=0"], ["--quiet"]),
        ("grpo_only@1", "grpo_only@1", ["rollout.seed=1"], ["--quiet"]),
        ("grpo_only@2", "grpo_only@2", ["rollout.seed=2"], ["--quiet"])]
    assert [(r["config_name"], r["repeat"]) for r in results][:3] == [("correctness_only", k) for k in range(3)]
    with pytest.raises(SystemExit):
        ablate.parse_args(["--suite", "starter", "--repeats", "0"])


def table_runs(results):
    from polyaudio_rl.ablate_report import run_row

    return {r["name"]: run_row(r) for r in results}


class _NoCluster:
    """The runs below fail before they need Ray: the session only counts restarts."""

    restarts = 0

    def restart(self):
        self.restarts += 1


def test_runner_records_a_fast_failing_run_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: %s\ngrpo: {no_such_key: 1}\n" % (ROOT / "configs" / "starter_ablation.yaml"))
    cfg = load_config("configs/starter_ablation.yaml", [])
    plan = [({"name": n, "config": str(bad), "judge": False, "sft": True}, cfg) for n in ("first", "second")]
    results, session = [], _NoCluster()
    a = argparse.Namespace(skip_sft=False, quiet=True, judge_url="", suite="starter", overrides=[], repeats=1)
    ablate.execute(plan, results, a, tmp_path / "out", session)
    assert [r["name"] for r in results] == ["first", "second"] and session.restarts == 2
    for r in results:
        assert r["status"] == "failed" and "status 2" in r["error"] and "no_such_key" in r["error"]
        assert (tmp_path / "out" / r["name"] / "error.txt").exists()


def test_report_writes_one_listening_page_for_the_runs_that_finished(tmp_path):
    from tests.polyaudio_rl.report_fixtures import demo_run

    arms = {name: demo_run(tmp_path / name, n_items=6, steps=2) for name in ("correctness_only", "plus_parsimony")}
    results = [{**_rec(name, 0.5, 0.6), "run_dir": str(d)} for name, d in arms.items()]
    results.append({"name": "broken", "config": "b.yaml", "status": "failed", "error": "boom",
                    "run_dir": str(tmp_path / "broken")})
    out = tmp_path / "suite"
    out.mkdir()
    write_report(out, [r["config"] for r in results], results, [])
    page = (out / "ablations.html").read_text()
    assert "correctness_only" in page and "plus_parsimony" in page and "broken" not in page
    assert page.count("<audio") == sum(2 + i % 2 for i in range(6))  # each held-out item's clips once (fixture: 2 or 3)
    assert 'href="ablations.md"' in page
