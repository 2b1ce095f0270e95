"""RUN_DIR/run.json: how a run started, read back by --resume (issue 30). Unit tests: no Ray, no model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from polyaudio_rl.run_manifest import (
    MANIFEST, ManifestError, adapter_sha256, check_init_adapter, check_resume_args, mark_stage, read_manifest,
    start_manifest,
)


def _adapter(d: Path, value: float = 0.5, extra: bool = False) -> Path:
    (d / "adapter").mkdir(parents=True)
    save_file({"base_model.model.x.lora_A.weight": torch.full((2, 4), value)}, str(d / "adapter" / "adapter_model.safetensors"))
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    (d / "trainer_state.json").write_text("{}")
    if extra:
        save_file({"encoder.w": torch.ones(3)}, str(d / "extra_trainable.safetensors"))
    return d


def test_adapter_digest_follows_weights_config_and_extra_tensors_only(tmp_path):
    a = adapter_sha256(_adapter(tmp_path / "a"))
    assert a == adapter_sha256(_adapter(tmp_path / "same"))  # same content elsewhere: same digest
    assert a != adapter_sha256(_adapter(tmp_path / "other", value=0.6))
    (tmp_path / "a" / "trainer_state.json").write_text('{"step": 3}')  # not a weight file
    assert adapter_sha256(tmp_path / "a") == a
    (tmp_path / "a" / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8}))
    assert adapter_sha256(tmp_path / "a") != a
    assert adapter_sha256(_adapter(tmp_path / "x", extra=True)) != adapter_sha256(_adapter(tmp_path / "y"))
    with pytest.raises(ManifestError, match=r"missing adapter/adapter_model.safetensors, adapter/adapter_config.json"):
        adapter_sha256(tmp_path / "nothing-here")


def test_manifest_round_trip_records_how_the_run_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _adapter(tmp_path / "ckpt")
    run = tmp_path / "run"
    m = start_manifest(run, "configs/demo.yaml", {"seed": 3, "grpo": {"steps": 8}}, ["grpo.steps=8"], 3,
                       init_adapter="ckpt")  # a relative path is recorded absolute
    assert m.init_adapter == str(tmp_path / "ckpt") and m.init_adapter_sha256 == adapter_sha256(tmp_path / "ckpt")
    back = read_manifest(run)
    assert back == m and back.sft_skipped() == "init_adapter" and back.grpo_steps_done() == 0
    mark_stage(run, "sft", skipped="init_adapter")
    mark_stage(run, "grpo", steps=8)
    back = read_manifest(run)
    assert back.stages == {"sft": {"skipped": "init_adapter"}, "grpo": {"steps": 8}} and back.grpo_steps_done() == 8
    assert sorted(p.name for p in run.iterdir()) == [MANIFEST]  # no temporary file left behind
    plain = start_manifest(tmp_path / "r2", "configs/tiny_cpu.yaml", {}, [], 0, skip_sft=True)
    assert plain.sft_skipped() == "skip_sft" and plain.init_adapter is None
    assert start_manifest(tmp_path / "r3", "c.yaml", {}, [], 0).sft_skipped() is None


@pytest.mark.parametrize("content,match", [
    (None, r"run.json: missing, so --resume cannot tell how the run started .* --config .*config.yaml"),
    ("{not json", r"run.json: damaged \(not readable JSON"),
    (json.dumps({"format": 99, "config_name": "c", "config": {}}), r"format 99, expected 1"),
    (json.dumps({"format": 1, "config_name": "c", "config": {}, "surprise": 1}), r"unknown keys \['surprise'\]"),
    (json.dumps({"format": 1, "config": {}}), r"damaged .*config_name"),
])
def test_bad_manifests_are_clear_errors(tmp_path, content, match):
    if content is not None:
        (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_manifest(tmp_path)


def test_a_changed_or_missing_init_adapter_is_refused_naming_the_path(tmp_path):
    ckpt = _adapter(tmp_path / "ckpt")
    run = tmp_path / "run"
    m = start_manifest(run, "configs/demo.yaml", {}, [], 0, init_adapter=str(ckpt))
    check_init_adapter(m, run)  # unchanged: fine
    save_file({"base_model.model.x.lora_A.weight": torch.full((2, 4), 0.7)}, str(ckpt / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(ManifestError, match=rf"started from --init-adapter {ckpt}, whose weights changed since .*"
                                            rf"Restore it .*--init-adapter <checkpoint>"):
        check_init_adapter(m, run)
    (ckpt / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(ManifestError, match=rf"{ckpt}, which is no longer an adapter checkpoint"):
        check_init_adapter(m, run)
    import shutil

    shutil.rmtree(ckpt)
    with pytest.raises(ManifestError, match=rf"--init-adapter {ckpt}, which is gone; restore it"):
        check_init_adapter(m, run)
    check_init_adapter(start_manifest(tmp_path / "r2", "c.yaml", {}, [], 0), tmp_path / "r2")  # no adapter: nothing


def test_resume_flags_that_contradict_the_manifest_are_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = _adapter(tmp_path / "ckpt")
    m = start_manifest(tmp_path / "run", "configs/demo.yaml", {}, [], 0, init_adapter=str(ckpt))
    check_resume_args(m, "run", None, None, False)
    check_resume_args(m, "run", "configs/demo.yaml", str(ckpt), False)  # agreeing flags are accepted
    with pytest.raises(ManifestError, match=r"started with --config configs/demo.yaml .*drop --config configs/x.yaml"):
        check_resume_args(m, "run", "configs/x.yaml", None, False)
    with pytest.raises(ManifestError, match=rf"from --init-adapter {ckpt}; drop --init-adapter other"):
        check_resume_args(m, "run", None, "other", False)
    with pytest.raises(ManifestError, match=r"started without --skip-sft; drop --skip-sft"):
        check_resume_args(m, "run", None, None, True)
    bare = start_manifest(tmp_path / "r2", "c.yaml", {}, [], 0, skip_sft=True)
    check_resume_args(bare, "r2", None, None, True)
    with pytest.raises(ManifestError, match=r"started without --init-adapter; drop --init-adapter"):
        check_resume_args(bare, "r2", None, str(ckpt), True)
