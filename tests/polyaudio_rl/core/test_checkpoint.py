"""Verified checkpoints (issue 14 item 3): checksums written last, verified on every load; the resume lookup skips
a damaged newest checkpoint with a warning naming the damaged file; an explicitly requested damaged one is an error.

The checkpoints are written by the real :func:`save_checkpoint` on the tiny model with a LoRA adapter; DeepSpeed's
gather functions are replaced by identity stand-ins (one process, no engine), which is all the writer needs.
"""
import json
import shutil
import warnings

import pytest
import torch

from polyaudio_rl.core import checkpoint as ck
from polyaudio_rl.core.checkpoint import (
    STATE_FILE,
    CheckpointError,
    CheckpointWarning,
    latest_valid_checkpoint,
    load_adapter_weights,
    read_state,
    save_checkpoint,
)
from polyaudio_rl.core.config import LoraConfig
from polyaudio_rl.core.model import add_lora, load_model

ADAPTER = "adapter/adapter_model.safetensors"


class _Engine:
    def __init__(self, model):
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        self.lr_scheduler = None


@pytest.fixture(scope="module")
def peft_model(tiny_ckpt):
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_ckpt), LoraConfig(rank=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def written(peft_model, tmp_path_factory):
    """Three checkpoints step-000001..3 of one run (each with its step's adapter), written once; tests copy them."""
    import deepspeed.utils

    mp = pytest.MonkeyPatch()
    mp.setattr(deepspeed.utils, "safe_get_full_fp32_param", lambda p: p.detach())
    mp.setattr(deepspeed.utils, "safe_get_full_optimizer_state", lambda p, key: None)
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    try:
        for step in (1, 2, 3):
            with torch.no_grad():
                for n, p in peft_model.named_parameters():
                    if "lora_B" in n:
                        p.add_(0.01)
            save_checkpoint(root / f"step-{step:06d}", _Engine(peft_model), peft_model, rank=0, step=step,
                            client_state={"data_position": 4 * step})
    finally:
        mp.undo()
    return root


@pytest.fixture
def run(written, tmp_path):
    d = tmp_path / "checkpoints"
    shutil.copytree(written, d)
    return d


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _delete(f):
    f.unlink()


def _flip_state_digit(f):  # the state file itself: still valid JSON, but a number changed
    state = json.loads(f.read_text())
    state["step"] += 10
    f.write_text(json.dumps(state, indent=1))


def _garble_state(f):
    f.write_text(f.read_text()[:40])


def test_manifest_lists_every_file_and_the_state_is_written_last(written):
    state = json.loads((written / "step-000003" / STATE_FILE).read_text())
    files = {p.relative_to(written / "step-000003").as_posix() for p in (written / "step-000003").rglob("*")
             if p.is_file()}
    assert set(state["files"]) == files - {STATE_FILE}
    assert ADAPTER in state["files"] and "rng.safetensors" in state["files"]
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in state["files"].values())
    assert not list(written.glob("*.partial")) and not list(written.glob("*/*.partial"))
    assert read_state(written / "step-000003")["client_state"] == {"data_position": 12}


def test_all_valid_gives_the_newest_without_warnings(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_valid_checkpoint(run) == str(run / "step-000003")
    assert latest_valid_checkpoint(run / "nowhere") is None


@pytest.mark.parametrize(
    "target, damage, why",
    [
        (ADAPTER, _truncate, "truncated"),
        (ADAPTER, _flip, "sha256 differs"),
        (ADAPTER, _delete, "missing"),
        ("rng.safetensors", _flip, "sha256 differs"),
        ("adapter/adapter_config.json", _truncate, "truncated"),
        (STATE_FILE, _flip_state_digit, "does not match its own digest"),
        (STATE_FILE, _garble_state, "not readable JSON"),
        (STATE_FILE, _delete, "not a complete learner checkpoint"),
    ],
)
def test_damaged_newest_falls_back_with_a_warning_naming_the_file(run, peft_model, target, damage, why):
    bad = run / "step-000003"
    damage(bad / target)
    named = str(bad / target) if target != STATE_FILE or damage is not _delete else str(bad)
    with pytest.warns(CheckpointWarning) as rec:
        got = latest_valid_checkpoint(run)
    assert got == str(run / "step-000002")
    msgs = [str(w.message) for w in rec if issubclass(w.category, CheckpointWarning)]
    assert len(msgs) == 1 and named in msgs[0] and why in msgs[0], msgs
    # asked for explicitly (--init-adapter / --resume CKPT): an error that names the file, nothing is loaded
    with pytest.raises(CheckpointError, match=why) as err:
        load_adapter_weights(bad, peft_model)
    assert named in str(err.value)
    assert read_state(got)["step"] == 2


def test_two_damaged_fall_back_twice_and_none_valid_gives_none(run):
    _flip(run / "step-000003" / ADAPTER)
    _truncate(run / "step-000002" / "rng.safetensors")
    with pytest.warns(CheckpointWarning) as rec:
        assert latest_valid_checkpoint(run) == str(run / "step-000001")
    msgs = " | ".join(str(w.message) for w in rec)
    assert str(run / "step-000003" / ADAPTER) in msgs and str(run / "step-000002" / "rng.safetensors") in msgs
    _delete(run / "step-000001" / ADAPTER)
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(run) is None


def test_unfinished_writer_dirs_are_ignored_silently(run):
    (run / "step-000009.tmp-abc").mkdir()
    (run / "step-000009.tmp-abc" / "rng.safetensors").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_valid_checkpoint(run) == str(run / "step-000003")


def test_steps_are_ordered_numerically(run):
    shutil.copytree(run / "step-000001", run / "step-1000000")
    assert latest_valid_checkpoint(run) == str(run / "step-1000000")


def test_old_checkpoint_without_checksums_loads_with_a_note(run, peft_model):
    old = run / "step-000003"
    state = json.loads((old / STATE_FILE).read_text())
    del state["files"], state["state_sha256"]  # as written before verified checkpoints
    (old / STATE_FILE).write_text(json.dumps(state, indent=1))
    with pytest.warns(CheckpointWarning, match="no checksums"):
        assert latest_valid_checkpoint(run) == str(old)
    with pytest.warns(CheckpointWarning, match="no checksums"):
        load_adapter_weights(old, peft_model)
    with pytest.warns(CheckpointWarning, match="no checksums"):
        assert read_state(old)["step"] == 3


def test_a_valid_checkpoint_loads_its_adapter(run, peft_model, tiny_ckpt):
    from safetensors.torch import load_file

    torch.manual_seed(1)
    other = add_lora(load_model(tiny_ckpt), LoraConfig(rank=4, alpha=8, dropout=0.0))
    load_adapter_weights(run / "step-000002", other)
    saved = load_file(str(run / "step-000002" / ADAPTER))
    got = {ck._adapter_key(n): p.detach() for n, p in other.named_parameters() if "lora_" in n}
    assert set(got) == set(saved)
    for k in saved:
        torch.testing.assert_close(got[k], saved[k])


@pytest.mark.parametrize("schedule, warmup, steps, lr", [
    ("linear", 0, 4, 5e-4 * (1 - 5 / 12)),  # step 4 (0-based) of 12 reads the schedule at 5: 1 - 5/12
    ("linear", 0, 11, 0.0),  # the last step: decayed to 0
    ("constant", 2, 1, 5e-4 * 2 / 3),  # warm-up of 2: step 1 at (1 + 1) / (2 + 1)
    ("constant", 0, 4, 5e-4),
])
def test_restored_scheduler_puts_its_learning_rate_into_the_optimizer(schedule, warmup, steps, lr):
    """A resumed (or restarted) learner's first update runs at the LR the uninterrupted run would use there, not at
    step 0's (torch's load_state_dict alone leaves the optimizer at the LR it was built with)."""
    from actors.lr_schedule import lr_lambda

    def fresh():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, schedule, 12))

    opt, sched = fresh()
    for _ in range(steps):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
    opt2, sched2 = fresh()
    ck.restore_scheduler(sched2, sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
    assert sched2.last_epoch == sched.last_epoch
