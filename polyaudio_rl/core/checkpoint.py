"""Learner checkpoints: safetensors + JSON only (nothing is pickled), written atomically, resumable exactly.

Layout of ``<dir>/``::

    adapter/adapter_model.safetensors   the LoRA adapter in PEFT format (fp32 master weights):
    adapter/adapter_config.json         ``PeftModel.from_pretrained(base, "<dir>/adapter")`` loads it anywhere
    extra_trainable.safetensors         other trainable tensors (only when the audio encoder is unfrozen)
    optimizer.safetensors               AdamW moments per trainable parameter, full (un-partitioned) shapes
    rng.safetensors                     torch CPU (and CUDA) generator state of every worker rank
    trainer_state.json                  step, optimizer step count, LR-scheduler state, python/numpy RNG per rank,
                                        the caller's client state (data position, ...), world size, ZeRO stage,
                                        and the manifest: sha256 and size of every other file (written last)

Everything is gathered to full tensors with DeepSpeed's ``safe_get_full_*`` API (works for ZeRO-0..3), so a
checkpoint does not depend on how optimizer state was partitioned. Rank 0 writes it with
:func:`polyaudio_rl.core.atomic.atomic_dir` (a temporary directory renamed when complete): a crash never leaves a half checkpoint.
Resuming: the adapter is loaded into the PEFT model *before* ``deepspeed.initialize`` (so ZeRO builds its
partitions from it), then :func:`restore_training_state` sets fp32 masters, moments, step counts, scheduler
and RNG. Resume with the same number of workers to continue the RNG streams exactly.

Verification: ``trainer_state.json`` is written last (to a temporary name, fsynced, then renamed) and lists the
sha256 and byte size of every other file (``files``) plus a digest of its own content (``state_sha256``); every
file is fsynced first. :func:`read_state` — and so every load — checks them all: a file that is missing, truncated
or altered after the checkpoint was written is a :class:`CheckpointError` naming that file. :func:`latest_valid_checkpoint`
picks the newest checkpoint that verifies, warning (:class:`CheckpointWarning`) about each newer damaged one by the
damaged file's path. Checkpoints written before checksums existed (no ``files`` entry) still load, with a warning that
they could not be verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir

ADAPTER_DIR = "adapter"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged or does not match the model; the message names the path."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is damaged, or loaded without verification (written without checksums)."""


CHECKPOINT_NAME = re.compile(r"step-\d+")
_HASH_CHUNK = 1 << 20


def _sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _state_digest(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def file_manifest(root: str | Path, sync: bool = False) -> dict[str, dict[str, Any]]:
    """``{relative posix path: {"sha256", "bytes"}}`` of every file under ``root`` except the state file
    (``sync``: fsync each file while reading it)."""
    root = Path(root)
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel != STATE_FILE:
            out[rel] = {"sha256": _sha256(f, sync), "bytes": f.stat().st_size}
    return out


def write_state(root: str | Path, state: dict[str, Any]) -> Path:
    """Write ``root/trainer_state.json`` last: the manifest of every other file (checksums), the state's own digest,
    then a temporary name, fsync and rename, so a reader sees no state file or a complete one."""
    root = Path(root)
    state = dict(state, files=file_manifest(root, sync=True))
    state["state_sha256"] = _state_digest(state)
    part = root / (STATE_FILE + ".partial")
    with open(part, "w") as f:
        f.write(json.dumps(state, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, root / STATE_FILE)
    try:  # make the rename durable
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return root / STATE_FILE


def verify_checkpoint(path: str | Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest; returns the state. Raises :class:`CheckpointError`
    naming the first damaged file (missing, wrong size, wrong checksum, unreadable or inconsistent state file).
    A checkpoint without a manifest (written before checksums) passes with a :class:`CheckpointWarning`."""
    path = Path(path)
    if state is None:
        state = _load_state_file(path)
    files = state.get("files")
    if files is None:
        warnings.warn(f"{path}: checkpoint has no checksums (written before verified checkpoints); "
                      "loading it unverified", CheckpointWarning, stacklevel=2)
        return state
    if state.get("state_sha256") != _state_digest(state):
        raise CheckpointError(f"{path / STATE_FILE}: damaged (its content does not match its own digest)")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path / STATE_FILE}: damaged (empty file manifest)")
    for rel, want in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {STATE_FILE} of checkpoint {path})")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{f}: damaged ({size} bytes, the checkpoint recorded {want['bytes']}; truncated?)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f}: damaged (sha256 differs from the one recorded when it was written)")
    return state


def _load_state_file(path: Path) -> dict[str, Any]:
    f = path / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"{path}: not a complete learner checkpoint (need {STATE_FILE} and {ADAPTER_DIR}/)")
    try:
        state = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{f}: damaged (not readable JSON: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: damaged (not a JSON object)")
    return state


def latest_valid_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The newest checkpoint ``ckpt_dir/step-NNNNNN`` that verifies (:func:`read_state`), or None.

    Temporary directories of a writer that was killed are ignored silently; each newer checkpoint that is damaged
    (a file missing, truncated or altered) is skipped with a :class:`CheckpointWarning` naming the damaged file,
    and the next older one is tried."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    cands = sorted((c for c in ckpt_dir.iterdir() if c.is_dir() and CHECKPOINT_NAME.fullmatch(c.name)),
                   key=lambda c: int(c.name.split("-")[1]), reverse=True)
    for c in cands:
        try:
            read_state(c)
        except CheckpointError as exc:
            warnings.warn(f"skipping damaged checkpoint {c}: {exc}; falling back to an older one",
                          CheckpointWarning, stacklevel=2)
            continue
        return str(c)
    return None


def _trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state()}
    np_state = st["numpy"]
    return {
        "python": [st["python"][0], list(st["python"][1]), st["python"][2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(py: list, npy: list, torch_state: torch.Tensor, cuda_state: torch.Tensor | None) -> None:
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    torch.set_rng_state(torch_state)
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)


def _all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _base_optimizer(engine: Any) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _optimizer_step_count(engine: Any) -> float:
    for st in _base_optimizer(engine).state.values():
        if "step" in st:
            return float(st["step"])
    return 0.0


def save_checkpoint(
    path: str | Path,
    engine: Any,
    peft_model: Any,
    rank: int,
    step: int,
    client_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path | None:
    """Collective: every rank calls it (full tensors are gathered); rank 0 writes. Returns the path on rank 0."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    path = Path(path)
    params = _trainable(peft_model)
    weights, moments = {}, {}
    for name, p in params:
        full = safe_get_full_fp32_param(p)
        weights[name] = full.detach().cpu().contiguous().clone() if full is not None else None
        for key in ("exp_avg", "exp_avg_sq"):
            try:
                m = safe_get_full_optimizer_state(p, key)
            except (KeyError, TypeError):  # no optimizer step yet: moments do not exist
                m = None
            if m is not None:
                moments[f"{name}::{key}"] = m.detach().cpu().contiguous().clone()
    rngs = _all_gather_object(_rng_state())
    if rank != 0:
        return None
    missing = [n for n, w in weights.items() if w is None]
    if missing:
        raise CheckpointError(f"{path}: could not gather trainable parameters {missing[:3]}")

    with atomic_dir(path) as tmp:
        lora = {n: w for n, w in weights.items() if "lora_" in n}
        extra = {n: w for n, w in weights.items() if "lora_" not in n}
        peft_model.save_pretrained(str(tmp / ADAPTER_DIR), state_dict=lora, safe_serialization=True)
        if extra:
            save_file(extra, str(tmp / "extra_trainable.safetensors"))
        if moments:
            save_file(moments, str(tmp / "optimizer.safetensors"))
        rng_tensors = {f"torch_rank{r}": s["torch"] for r, s in enumerate(rngs)}
        rng_tensors.update({f"cuda_rank{r}": s["cuda"] for r, s in enumerate(rngs) if s["cuda"] is not None})
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        sched = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "optimizer_step": _optimizer_step_count(engine),
            "scheduler": sched,
            "rng": [{"python": s["python"], "numpy": s["numpy"]} for s in rngs],
            "world_size": len(rngs),
            "trainable": sorted(weights),
            "client_state": client_state or {},
            "meta": meta or {},
        }
        write_state(tmp, state)  # last: the manifest (checksums) of every file written above
    return path


def read_state(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """``trainer_state.json`` of a complete checkpoint whose files match their recorded checksums (``verify``);
    raises CheckpointError naming the path — or the damaged file — otherwise."""
    path = Path(path)
    state = _load_state_file(path)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION}")
    if verify:
        verify_checkpoint(path, state)
    if not (path / ADAPTER_DIR / "adapter_model.safetensors").is_file():
        raise CheckpointError(f"{path}: not a complete learner checkpoint (need {STATE_FILE} and {ADAPTER_DIR}/)")
    return state


def load_adapter_weights(path: str | Path, peft_model: Any) -> None:
    """Before ``deepspeed.initialize``: copy the saved adapter (and extra trainable tensors) into ``peft_model``."""
    from peft import set_peft_model_state_dict

    path = Path(path)
    read_state(path)
    sd = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, sd)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"{path}: adapter tensors do not match the model's LoRA layout: {unexpected[:3]}")
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    if len(sd) != n_lora:
        raise CheckpointError(f"{path}: adapter has {len(sd)} tensors, the model has {n_lora} LoRA parameters "
                              "(different rank/targets in the config?)")
    extra_f = path / "extra_trainable.safetensors"
    if extra_f.is_file():
        extra = load_file(str(extra_f))
        params = dict(peft_model.named_parameters())
        for name, value in extra.items():
            if name not in params:
                raise CheckpointError(f"{path}: extra trainable tensor {name} is not in the model")
            with torch.no_grad():
                params[name].copy_(value)


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """Load an LR scheduler's state and put its current learning rate into the optimizer's param groups: a torch
    scheduler's ``load_state_dict`` restores its step count but leaves the optimizer at the LR it was built with (step
    0's), so with a decaying ``lr_schedule`` the first update after a restore would run at the wrong LR."""
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def restore_training_state(path: str | Path, engine: Any, peft_model: Any, rank: int) -> dict[str, Any]:
    """After ``deepspeed.initialize`` (collective): fp32 masters, AdamW moments and step, scheduler, RNG.

    Returns the checkpoint's state dict (its ``client_state`` holds the caller's data position).
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    path = Path(path)
    state = read_state(path)
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    if state["world_size"] != world:
        raise CheckpointError(f"{path}: written by {state['world_size']} workers, resuming with {world}; "
                              "use the same learner.num_workers to resume exactly")
    params = _trainable(peft_model)
    if sorted(n for n, _ in params) != state["trainable"]:
        raise CheckpointError(f"{path}: the trainable parameters differ from the checkpoint's")
    weights = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))
    extra_f = path / "extra_trainable.safetensors"
    extra = load_file(str(extra_f)) if extra_f.is_file() else {}
    opt_f = path / "optimizer.safetensors"
    moments = load_file(str(opt_f)) if opt_f.is_file() else {}

    base = _base_optimizer(engine)
    if moments:  # torch AdamW creates its state lazily; create it so the moments have somewhere to go
        # ZeRO-3 keeps its fp32 partitions out of param_groups between steps (fp32_partitioned_groups_flat)
        flat = list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [])
        flat += [p for group in base.param_groups for p in group["params"] if all(p is not q for q in flat)]
        amsgrad = any(g.get("amsgrad") for g in base.param_groups)
        for p in flat:
            st = base.state[p]
            if not st:
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] = torch.tensor(float(state["optimizer_step"]))
        link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if callable(link):  # ZeRO-1/2 and bf16: map each parameter's fragment onto the (now existing) moments
            link()
    for name, p in params:
        key = _adapter_key(name) if "lora_" in name else name
        value = weights[key] if "lora_" in name else extra[name]
        safe_set_full_fp32_param(p, value.to(torch.float32))
        for mk in ("exp_avg", "exp_avg_sq"):
            if f"{name}::{mk}" in moments:
                safe_set_full_optimizer_state(p, moments[f"{name}::{mk}"], mk)
    if state["scheduler"] is not None and engine.lr_scheduler is not None:
        restore_scheduler(engine.lr_scheduler, state["scheduler"])
    engine.global_steps = int(state["step"])
    rng = load_file(str(path / "rng.safetensors"))
    _set_rng_state(
        state["rng"][rank]["python"], state["rng"][rank]["numpy"], rng[f"torch_rank{rank}"], rng.get(f"cuda_rank{rank}")
    )
    return state


def _adapter_key(param_name: str) -> str:
    """PEFT parameter name → the key ``save_pretrained`` writes (adapter name dropped)."""
    return param_name.replace(".default.", ".")
