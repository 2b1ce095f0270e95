"""MMAU-Pro (parquet, multi-audio subset) and MMAU (test-mini JSON): loaders and scoring on fixture files."""
from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from eval.mmau import (
    load_mmau, load_mmau_pro, match_choice, mmau_string_match, openai_embedder, score_predictions,
)

_spec = importlib.util.spec_from_file_location("eval_http_helper", Path(__file__).with_name("eval_http_helper.py"))
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)


def write_wav(path: Path, seconds: float, freq: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return str(path.relative_to(path.parents[1]))


def make_mmau_pro(tmp: Path) -> Path:
    a = write_wav(tmp / "data" / "a.wav", 0.5, 220)
    b = write_wav(tmp / "data" / "b.wav", 0.7, 440)
    c = write_wav(tmp / "data" / "c.wav", 0.3, 660)
    rows = [
        {"id": "p1", "audio_path": [a, b], "question": "Which clip is higher pitched?",
         "choices": ["the first clip", "the second clip"], "answer": "the second clip", "category": "sound"},
        {"id": "p2", "audio_path": [a, b, c], "question": "Which instrument plays in all clips?",
         "choices": ["piano", "violin", "flute", "drums"], "answer": "violin", "category": "music"},
        {"id": "p3", "audio_path": [a], "question": "single audio", "choices": ["x", "y"], "answer": "x",
         "category": "sound"},
        {"id": "p4", "audio_path": [a, c], "question": "Describe both.", "choices": None, "answer": "two tones",
         "category": "open"},
        {"id": "p5", "audio_path": [b, c], "question": "bad row", "choices": ["x", "y"], "answer": "z",
         "category": "sound"},
    ]
    path = tmp / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_mmau_pro_loader_keeps_the_multi_audio_closed_form_rows(tmp_path):
    loaded = load_mmau_pro(str(make_mmau_pro(tmp_path)))
    assert [it.id for it in loaded.items] == ["p1", "p2"]
    assert [len(it.audios) for it in loaded.items] == [2, 3]
    assert all(Path(p).is_file() for it in loaded.items for p in it.audios)  # paths resolved against the folder
    assert sum(loaded.skipped.values()) == 2 and any("open-ended" in k for k in loaded.skipped)
    assert loaded.bad == [{"id": "p5", "error": "MMAU-Pro p5: answer 'z' is not one of the choices ['x', 'y']"}]
    assert [it.id for it in load_mmau_pro(str(tmp_path / "test.parquet"), multi_audio_only=False).items] == ["p1", "p2", "p3"]


@pytest.mark.parametrize("pred, idx", [
    ("violin", 1), ("Violin.", 1), ("B", 1), ("(B)", 1), ("B) violin", 1), ("The answer is B.", 1),
    ("<answer>C</answer>", 2), ("I hear a violin playing throughout.", 1), ("piano or violin", None),
    ("A or B", None), ("answer: E", None), ("a dog barks", None), ("", None),
])
def test_match_choice_by_letter_and_string(pred, idx):
    assert match_choice(pred, ["piano", "violin", "flute", "drums"]) == idx


def test_official_mmau_string_match():
    ch = ["Man", "Woman", "Child", "Robot"]
    assert mmau_string_match("Woman", "It is a woman speaking.", ch)
    assert not mmau_string_match("Woman", "A woman and a man", ch)
    assert not mmau_string_match("Woman", "", ch)
    # words shared with the answer do not count against it
    assert mmau_string_match("a loud dog", "a loud dog barks", ["a loud dog", "a quiet cat"])


def test_scoring_string_and_embedding(tmp_path):
    items = load_mmau_pro(str(make_mmau_pro(tmp_path))).items
    preds = {"p1": "The second clip is higher.", "p2": "piano"}
    rep = asyncio.run(score_predictions(items, preds, "string"))
    assert (rep["accuracy"], rep["scored"], rep["failed"]) == (50.0, 2, 0)
    assert rep["per_category"] == {"music": {"n": 1, "accuracy": 0.0}, "sound": {"n": 1, "accuracy": 100.0}}
    # a failed item is not scored as wrong
    rep = asyncio.run(score_predictions(items, {"p1": "the second clip", "p2": None}, "string"))
    assert (rep["accuracy"], rep["scored"], rep["failed"]) == (100.0, 1, 1)
    with helper.running_server() as srv:
        embed = openai_embedder(srv.url, "bow")
        # string matching picks no choice for these answers; embedding similarity picks the closest one
        preds = {"p1": "the second one", "p2": "it sounds like a violin to me"}
        assert asyncio.run(score_predictions(items, preds, "string"))["accuracy"] == 50.0  # p2 matches by words
        rep = asyncio.run(score_predictions(items, preds, "embedding", embed))
    assert rep["accuracy"] == 100.0
    assert [r["matched"] for r in rep["rows"]] == ["the second clip", "violin"]
    assert all(r["similarity"] > 0 for r in rep["rows"])


def test_mmau_test_mini_json(tmp_path):
    a = write_wav(tmp_path / "test-mini-audios" / "s1.wav", 0.4, 300)
    data = [
        {"id": "m1", "audio_id": a, "question": "What is heard?", "choices": ["Dog", "Siren", "Rain"],
         "answer": "Siren", "task": "sound", "difficulty": "easy", "sub-category": "x"},
        {"id": "m2", "audio_id": a, "question": "Tempo?", "choices": ["Fast", "Slow"], "answer": "Slow",
         "task": "music", "difficulty": "hard"},
        {"id": "m3", "audio_id": a, "question": "Who?", "choices": ["Man", "Woman"], "answer": "Woman",
         "task": "speech", "difficulty": "medium"},
        {"id": "m4", "question": "no audio field", "choices": ["a"], "answer": "a", "task": "sound"},
    ]
    path = tmp_path / "mmau-test-mini.json"
    path.write_text(json.dumps(data))
    loaded = load_mmau(str(path))
    assert [it.id for it in loaded.items] == ["m1", "m2", "m3"] and loaded.bad[0]["id"] == "m4"
    assert "audio_id" in loaded.bad[0]["error"]
    preds = {"m1": "A siren is heard.", "m2": "Fast and slow", "m3": "Woman"}
    rep = asyncio.run(score_predictions(loaded.items, preds, "string"))
    assert rep["accuracy"] == pytest.approx(200 / 3)
    assert {c: v["accuracy"] for c, v in rep["per_category"].items()} == {"music": 0.0, "sound": 100.0, "speech": 100.0}
    assert rep["category_mean"] == pytest.approx(200 / 3)
