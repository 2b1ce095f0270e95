"""Judge-human agreement (Table 3): hand-computed Spearman and Kendall values."""
from __future__ import annotations

import json

import pytest

from eval.agreement import agreement, main, read_judge_scores, read_scores_csv


def test_hand_computed_rho_and_tau():
    human = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    judge = {"a": 1, "b": 3, "c": 2, "d": 4, "e": 5, "z": 3}
    res = agreement(human, judge)
    # d = (0, 1, 1, 0, 0): rho = 1 - 6*2 / (5*24) = 0.9 ; one discordant pair of 10: tau = (9 - 1) / 10 = 0.8
    assert res["spearman_rho"] == pytest.approx(0.9)
    assert res["kendall_tau"] == pytest.approx(0.8)
    assert (res["n"], res["judge_only"], res["human_only"]) == (5, 1, 0)


def test_reversed_order_is_minus_one():
    res = agreement({str(i): i for i in range(6)}, {str(i): 10 - i for i in range(6)})
    assert res["spearman_rho"] == pytest.approx(-1.0) and res["kendall_tau"] == pytest.approx(-1.0)


def test_csv_and_results_jsonl(tmp_path, capsys):
    h = tmp_path / "human.csv"
    h.write_text("id,annotator,human_score\na,x,1\na,y,2\nb,x,3\nc,x,4\nd,x,5\n")
    assert read_scores_csv(str(h), ("human_score",)) == {"a": 1.5, "b": 3.0, "c": 4.0, "d": 5.0}
    r = tmp_path / "results.jsonl"
    recs = [{"id": "a", "status": "ok", "judge_score": 1.5}, {"id": "b", "status": "ok", "judge_score": 2.0},
            {"id": "c", "status": "ok", "judge_score": 4.5}, {"id": "d", "status": "failed", "judge_score": None},
            {"id": "d", "status": "ok", "judge_score": 5.0}, {"id": "e", "status": "failed"}]
    r.write_text("\n".join(json.dumps(x) for x in recs) + "\n{torn")
    assert read_judge_scores(str(r)) == {"a": 1.5, "b": 2.0, "c": 4.5, "d": 5.0}
    main(["--human", str(h), "--results", str(r), "--out", str(tmp_path / "agr")])
    assert "| judge | 1.000 | 1.000 | 4 |" in capsys.readouterr().out
    assert (tmp_path / "agr" / "agreement.png").stat().st_size > 1000


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "h.csv"
    bad.write_text("id,human_score\na,five\n")
    with pytest.raises(ValueError, match="h.csv:2 \\(id a\\): score 'five' is not a number"):
        read_scores_csv(str(bad), ("human_score",))
    nocol = tmp_path / "n.csv"
    nocol.write_text("item,rating\na,1\n")
    with pytest.raises(ValueError, match="needs an 'id' column"):
        read_scores_csv(str(nocol), ("human_score",))
    with pytest.raises(ValueError, match="only 2 items"):
        agreement({"a": 1, "b": 2}, {"a": 1, "b": 2})
