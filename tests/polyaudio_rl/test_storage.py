"""Run directories on any pyarrow.fs URI (issue 14): staging, mirror, resume pull, clear errors."""
from __future__ import annotations

import pytest

from polyaudio_rl import train
from polyaudio_rl.storage import STAGING_ENV, RunStorage, is_uri


@pytest.mark.parametrize("target,uri", [
    ("runs/x", False), ("/shared/runs/x", False), ("file:///shared/runs/x", True), ("s3://bucket/runs/x", True),
    ("gs://b/x", True), ("C:/runs", False),
])
def test_is_uri_table(target, uri):
    assert is_uri(target) is uri


def test_plain_path_is_written_directly(tmp_path):
    s = RunStorage.open(str(tmp_path / "run"))
    assert s.local == tmp_path / "run" and s.uri is None
    s.push(), s.pull()  # no-ops
    assert not (tmp_path / "run").exists()


def test_file_uri_is_staged_mirrored_and_pulled_back(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    target = tmp_path / "shared" / "run-1"
    s = RunStorage.open(f"file://{target}")
    assert s.local.parent == tmp_path / "staging" and not s.exists()
    (s.local / "grpo" / "checkpoints" / "step-000002").mkdir(parents=True)
    (s.local / "metrics.jsonl").write_text('{"step": 1}\n')
    (s.local / "grpo" / "checkpoints" / "step-000002" / "a.safetensors").write_bytes(b"\x00\x01" * 100)
    s.push()
    assert s.exists() and (target / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (target / "grpo" / "checkpoints" / "step-000002" / "a.safetensors").read_bytes() == b"\x00\x01" * 100
    (s.local / "metrics.jsonl").write_text("stale staging copy\n")
    (target / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')  # e.g. written by another node's run
    RunStorage.open(f"file://{target}").pull()
    assert (s.local / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_bad_run_dir_uris_are_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    assert train.main(["--resume", f"file://{tmp_path}/no-such-run", "--quiet"]) == 2
    assert f"run directory file://{tmp_path}/no-such-run does not exist" in capsys.readouterr().err
    assert train.main(["--run-dir", "nosuchscheme://bucket/run", "--quiet"]) == 2
    assert "run directory 'nosuchscheme://bucket/run': pyarrow.fs cannot open it" in capsys.readouterr().err
