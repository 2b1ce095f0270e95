"""How a run started, so that ``--resume RUN_DIR`` continues that run and no other: ``RUN_DIR/run.json``.

Written when a run starts, before any stage, and rewritten (atomically) each time a stage finishes::

    {"format": 1, "config_name": "configs/demo.yaml", "config": {...the merged config...},
     "overrides": ["grpo.steps=8"], "seed": 0, "skip_sft": false,
     "init_adapter": "/abs/runs/a/sft/checkpoints/step-000048", "init_adapter_sha256": "9f2c…",
     "stages": {"sft": {"skipped": "init_adapter"}, "grpo": {"steps": 8}}, "started_utc": "2026-12-07T04:00:00Z"}

``--resume`` reads it back (:func:`read_manifest`) and follows it: SFT is never run again when the run skipped it
(``--skip-sft``, ``--init-adapter``) or finished it, GRPO starts from the recorded init adapter when no GRPO
checkpoint exists yet, and the header names the original config. The init adapter is checked first
(:func:`check_init_adapter`): a path that is gone, or whose weights changed since the run started (sha256 over the
files that set them, :func:`adapter_sha256`), is a :class:`ManifestError` naming the path and what to do — never a
run that silently trains from something else.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .core.atomic import atomic_write_text

MANIFEST = "run.json"
FORMAT_VERSION = 1
# the files of a learner checkpoint that set the weights a stage starts from (checkpoint.load_adapter_weights)
ADAPTER_FILES = ("adapter/adapter_model.safetensors", "adapter/adapter_config.json")
OPTIONAL_ADAPTER_FILES = ("extra_trainable.safetensors",)
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A run directory's manifest is missing or damaged, or ``--resume`` cannot follow it; the message names the
    path and what to do."""


@dataclass
class RunManifest:
    """How a run started (see the module docstring); ``stages`` grows as stages finish."""

    config_name: str
    """The config file the run started from, as given (``configs/demo.yaml``), or the default's path."""
    config: dict[str, Any]
    """The merged config (file + overrides) the run trains with; also in ``RUN_DIR/config.yaml``."""
    overrides: list[str] = field(default_factory=list)
    """The dotted ``key=value`` overrides given when the run started."""
    seed: int = 0
    """The run's seed (``config.seed``)."""
    skip_sft: bool = False
    """``--skip-sft``: GRPO starts from the base model; no SFT stage."""
    init_adapter: str | None = None
    """``--init-adapter``, as an absolute path: GRPO starts from this checkpoint; no SFT stage."""
    init_adapter_sha256: str | None = None
    """:func:`adapter_sha256` of ``init_adapter`` when the run started."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stages finished or skipped: ``{"sft": {"checkpoint": ...} | {"skipped": why}, "grpo": {"steps": N}}``."""
    started_utc: str = ""
    """When the run started (ISO 8601, UTC)."""
    format: int = FORMAT_VERSION
    """Version of this file's layout."""

    def sft_skipped(self) -> str | None:
        """Why the run has no SFT stage (``"init_adapter"``, ``"skip_sft"``), or None when it has one."""
        if self.init_adapter:
            return "init_adapter"
        return "skip_sft" if self.skip_sft else None

    def grpo_steps_done(self) -> int:
        """GRPO steps of the last time the GRPO stage ran to its end (0: it never did)."""
        return int(self.stages.get("grpo", {}).get("steps", 0))


def adapter_sha256(path: str | Path) -> str:
    """One sha256 over the files of the checkpoint ``path`` that set a stage's starting weights: the PEFT adapter
    (safetensors + ``adapter_config.json``) and, when present, ``extra_trainable.safetensors``. Each file's relative
    name goes into the digest with its content, so renaming or dropping a file changes it too."""
    path = Path(path)
    missing = [rel for rel in ADAPTER_FILES if not (path / rel).is_file()]
    if missing:
        raise ManifestError(f"{path}: not an adapter checkpoint (missing {', '.join(missing)}); give a learner "
                            "checkpoint directory such as RUN_DIR/sft/checkpoints/step-000010")
    total = hashlib.sha256()
    for rel in (*ADAPTER_FILES, *(r for r in OPTIONAL_ADAPTER_FILES if (path / r).is_file())):
        h = hashlib.sha256()
        with open(path / rel, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        total.update(f"{rel}\0{h.hexdigest()}\n".encode())
    return total.hexdigest()


def start_manifest(run_dir: str | Path, config_name: str, config: dict[str, Any], overrides: list[str], seed: int,
                   skip_sft: bool = False, init_adapter: str | None = None) -> RunManifest:
    """Record how the run in ``run_dir`` starts and write ``run_dir/run.json``. The init adapter is checksummed now:
    a path that is not an adapter checkpoint is a :class:`ManifestError` before anything runs."""
    init = str(Path(init_adapter).resolve()) if init_adapter else None
    m = RunManifest(config_name=str(config_name), config=config, overrides=list(overrides), seed=int(seed),
                    skip_sft=bool(skip_sft), init_adapter=init, init_adapter_sha256=adapter_sha256(init) if init else None,
                    started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_manifest(run_dir, m)
    return m


def write_manifest(run_dir: str | Path, manifest: RunManifest) -> Path:
    """Write ``run_dir/run.json`` atomically (a crash leaves the previous manifest or the new one)."""
    return atomic_write_text(Path(run_dir) / MANIFEST, json.dumps(asdict(manifest), indent=1) + "\n")


def read_manifest(run_dir: str | Path) -> RunManifest:
    """The manifest of ``run_dir``; a missing, unreadable or unknown-format one is a :class:`ManifestError`."""
    f = Path(run_dir) / MANIFEST
    if not f.is_file():
        raise ManifestError(f"{f}: missing, so --resume cannot tell how the run started (its config, --init-adapter, "
                            f"--skip-sft); start a new run instead, e.g. --config {Path(run_dir) / 'config.yaml'} "
                            "with the --init-adapter or --skip-sft the run began with")
    try:
        raw = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{f}: damaged (not readable JSON: {exc})") from exc
    known = {x.name for x in fields(RunManifest)}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION or set(raw) - known:
        what = (f"unknown keys {sorted(set(raw) - known)}" if isinstance(raw, dict) and set(raw) - known
                else f"format {raw.get('format') if isinstance(raw, dict) else raw!r}, expected {FORMAT_VERSION}")
        raise ManifestError(f"{f}: not a run manifest this version reads ({what})")
    try:
        return RunManifest(**raw)
    except TypeError as exc:
        raise ManifestError(f"{f}: damaged ({exc})") from exc


def mark_stage(run_dir: str | Path, stage: str, **info: Any) -> RunManifest:
    """Record that ``stage`` finished (or was skipped) with ``info`` (e.g. ``steps=8``), rewriting the manifest."""
    m = read_manifest(run_dir)
    m.stages[stage] = dict(info)
    write_manifest(run_dir, m)
    return m


def check_init_adapter(manifest: RunManifest, run_dir: str | Path) -> None:
    """The recorded init adapter must still be there with the weights the run started from; otherwise a
    :class:`ManifestError` naming the path, what changed and what to do."""
    if not manifest.init_adapter:
        return
    path = Path(manifest.init_adapter)
    redo = (f"restore it (the run started from sha256 {manifest.init_adapter_sha256}), or start a new run from the "
            f"adapter you have: --config {Path(run_dir) / 'config.yaml'} --init-adapter <checkpoint>")
    if not path.is_dir():
        raise ManifestError(f"the run {run_dir} started from --init-adapter {path}, which is gone; {redo}")
    try:
        now = adapter_sha256(path)
    except ManifestError as exc:
        raise ManifestError(f"the run {run_dir} started from --init-adapter {path}, which is no longer an adapter "
                            f"checkpoint ({exc}); {redo}") from exc
    if now != manifest.init_adapter_sha256:
        raise ManifestError(f"the run {run_dir} started from --init-adapter {path}, whose weights changed since "
                            f"(sha256 {now}, recorded {manifest.init_adapter_sha256}); resuming would train from "
                            f"another adapter than the run's first steps did. {redo[0].upper()}{redo[1:]}")


def check_resume_args(manifest: RunManifest, run_dir: str | Path, config: str | None, init_adapter: str | None,
                      skip_sft: bool) -> None:
    """``--resume`` follows the manifest; a ``--config``, ``--init-adapter`` or ``--skip-sft`` that says otherwise
    is a :class:`ManifestError` (one that agrees with it is accepted). Dotted overrides stay allowed."""
    if config is not None and Path(config).resolve() != Path(manifest.config_name).resolve():
        raise ManifestError(f"--resume {run_dir} continues the run started with --config {manifest.config_name} "
                            f"(its merged config is {Path(run_dir) / 'config.yaml'}); drop --config {config}, or start "
                            "a new run with it")
    if init_adapter is not None and (manifest.init_adapter is None
                                     or Path(init_adapter).resolve() != Path(manifest.init_adapter)):
        raise ManifestError(f"--resume {run_dir} continues the run started "
                            + (f"from --init-adapter {manifest.init_adapter}" if manifest.init_adapter
                               else "without --init-adapter")
                            + f"; drop --init-adapter {init_adapter}, or start a new run from it")
    if skip_sft and not manifest.skip_sft:
        raise ManifestError(f"--resume {run_dir} continues a run started without --skip-sft; drop --skip-sft")


def follow_manifest(run_dir: str | Path, config: str | None, init_adapter: str | None, skip_sft: bool
                    ) -> RunManifest:
    """``--resume run_dir``: its manifest, once the flags given agree with it (:func:`check_resume_args`) and its
    init adapter is still the one the run started from (:func:`check_init_adapter`)."""
    m = read_manifest(run_dir)
    check_resume_args(m, run_dir, config, init_adapter, skip_sft)
    check_init_adapter(m, run_dir)
    return m


__all__ = ["MANIFEST", "ManifestError", "RunManifest", "adapter_sha256", "check_init_adapter", "check_resume_args",
           "follow_manifest", "mark_stage", "read_manifest", "start_manifest", "write_manifest"]
