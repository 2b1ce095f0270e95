"""Versioned, verified weight sync from the learner to a rollout engine.

Two modes (``rollout.sync_mode``):

* ``merged`` — the learner folds LoRA into the base weights of the layers it adapts and sends
  ``{hub name: tensor}`` (un-padded, hub layout: ``language_model.model.layers.0.self_attn.q_proj.weight``); the
  vLLM engine loads them with ``collective_rpc("reload_weights", ...)`` (vLLM packs q/k/v and gate/up itself; a plain
  ``model.load_weights`` fails on CPU), then resets the encoder and prefix caches so nothing computed under the old
  weights is reused (:meth:`actors.rollout_engine.VLLMEngine.load_merged`). The HF engine copies them in place.
* ``adapter`` — only the LoRA tensors (``...q_proj.lora_A.weight``, ``...lora_B.weight``); the engine writes a PEFT
  directory from them (no shared filesystem: the tensors arrive through the Ray object store) and serves it as a
  new vLLM ``LoRARequest`` (the model family's LoRA-capable class, :mod:`polyaudio_rl.core.models.vllm_plugin`); the HF engine folds them into
  its weights. Names, merging and adapter export live in :mod:`polyaudio_rl.core.weights`.

Verification. Every sync ends with a :class:`Fingerprint`: the engine's log-probs of a fixed probe completion after a
fixed two-clip probe prompt (:func:`make_probe`). Given the learner's log-probs of the same tokens (``expected``:
:func:`reference_logprobs` on a transformers/PEFT model, or ``Learner.completion_logprobs`` on the probe), a
difference above ``rollout.sync_check_tolerance`` raises :class:`SyncError` — a sync that did not take effect is an
error. Without ``expected``, a push whose tensors differ from the previous push but leaves the probe bit-identical
also raises. A failed sync leaves the engine at version -1, so it refuses versioned rollouts until the next good sync.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from polyaudio_rl.core.prompts import MultiAudioPrompt, prompt_from_arrays
from .rollout_engine import RolloutEngine, SyncError, hf_completion_logprobs

PROBE_ID = "__sync_probe__"
PROBE_QUESTION = "Which clip has the higher pitch, and how many clips are there?"
PROBE_TEXT = ("The second clip has the higher pitch. There are two clips, the first is lower and the second is "
              "higher, so the answer is Audio 2. ")


@dataclass
class Probe:
    """A fixed prompt (two tones) and a fixed completion whose log-probs fingerprint a policy."""

    prompt: MultiAudioPrompt
    completion_ids: list[int]


@dataclass
class Fingerprint:
    """Log-probs of the probe completion under one engine's weights, tagged with its policy version."""

    version: int
    logprobs: list[float]

    def max_abs_diff(self, other: Sequence[float] | "Fingerprint") -> float:
        ref = other.logprobs if isinstance(other, Fingerprint) else list(other)
        if len(ref) != len(self.logprobs):
            raise SyncError(f"fingerprint lengths differ: {len(self.logprobs)} vs {len(ref)} probe tokens")
        return float(np.max(np.abs(np.asarray(self.logprobs) - np.asarray(ref))))


@dataclass
class SyncResult:
    """What an actor reports after a sync: the version it now serves and the proof."""

    actor: int
    version: int
    fingerprint: Fingerprint
    max_abs_diff: float | None  # vs the learner's expected log-probs (None when none were given)
    push_s: float  # time to load the weights (incl. writing the adapter dir, resetting the prefix cache)
    probe_s: float  # time to compute the fingerprint
    mode: str
    num_tensors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def sync_tolerance(cfg: Any) -> float:
    """``rollout.sync_check_tolerance``, or by ``model.dtype`` when it is 0 (fp32: 1e-3; bf16/fp16: 5e-2)."""
    if cfg.rollout.sync_check_tolerance > 0:
        return cfg.rollout.sync_check_tolerance
    return 1e-3 if cfg.model.dtype == "float32" else 5e-2


def make_probe(processor: Any, num_tokens: int = 16) -> Probe:
    """The same probe on every process: two deterministic tones and ``num_tokens`` fixed completion tokens."""
    sr = 16000
    t1, t2 = np.arange(int(0.6 * sr)) / sr, np.arange(int(0.9 * sr)) / sr
    audios = [(0.3 * np.sin(2 * np.pi * 330.0 * t1)).astype(np.float32),
              (0.3 * np.sin(2 * np.pi * 880.0 * t2)).astype(np.float32)]
    prompt = prompt_from_arrays(PROBE_ID, PROBE_QUESTION, audios, processor)
    tok = processor.tokenizer
    ids = list(tok(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    special = set(tok.all_special_ids)
    ids = [t for t in ids if t not in special]
    if not ids:
        raise ValueError("the tokenizer produced no probe tokens")
    while len(ids) < num_tokens:
        ids = ids + ids
    return Probe(prompt=prompt, completion_ids=ids[:num_tokens])


def reference_logprobs(model: Any, processor: Any, probe: Probe) -> list[float]:
    """The learner-side fingerprint: log-probs of the probe completion under a transformers/PEFT model."""
    return hf_completion_logprobs(model, processor, probe.prompt, probe.completion_ids)


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """A cheap content digest of a weight dict (names, shapes, sums): tells one push from the next."""
    h = hashlib.sha256()
    for k in sorted(weights):
        t = weights[k].detach()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(np.float64(t.double().sum().item()).tobytes())
        h.update(np.float64(t.double().abs().sum().item()).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ engine side
class WeightSyncer:
    """Applies versioned pushes to one engine and proves each took effect."""

    def __init__(self, engine: RolloutEngine, probe: Probe, mode: str, tolerance: float, actor: int = -1):
        if mode not in ("merged", "adapter"):
            raise ValueError(f"sync mode must be 'merged' or 'adapter', got {mode!r}")
        self.engine, self.probe, self.mode, self.tol, self.actor = engine, probe, mode, tolerance, actor
        self._last_digest: str | None = None
        self._last_fp: Fingerprint | None = None

    def _who(self) -> str:
        return f"rollout actor {self.actor}" if self.actor >= 0 else f"{self.engine.name} engine"

    def fingerprint(self) -> Fingerprint:
        lps = self.engine.completion_logprobs(self.probe.prompt, self.probe.completion_ids)
        return Fingerprint(version=self.engine.version, logprobs=lps)

    def check(self, fp: Fingerprint, expected: Sequence[float], version: int) -> float:
        diff = fp.max_abs_diff(expected)
        if not diff <= self.tol:
            raise SyncError(
                f"{self._who()}: policy version {version} is not in effect — probe log-probs differ from the "
                f"learner's by {diff:.3g} (> rollout.sync_check_tolerance {self.tol:g}); the weights did not reach "
                "the engine (skipped or failed sync)"
            )
        return diff

    def verify(self, expected: Sequence[float], version: int | None = None) -> Fingerprint:
        """Recompute the fingerprint and compare it with the learner's; raises :class:`SyncError` on mismatch."""
        fp = self.fingerprint()
        if version is not None and fp.version != version:
            raise SyncError(f"{self._who()}: serves policy version {fp.version}, expected {version}")
        self.check(fp, expected, fp.version)
        return fp

    def sync(self, weights: dict[str, torch.Tensor], version: int, expected: Sequence[float] | None = None,
             rewind: bool = False) -> SyncResult:
        """Load ``weights`` as policy ``version`` (> the current one), fingerprint, verify. ``rewind`` allows an
        older version: a restarted actor regenerating a shard of a batch tagged with a version the pool has moved
        past (:meth:`actors.rollout.RolloutPool.collect`)."""
        if not isinstance(weights, dict) or not weights:
            raise SyncError(f"{self._who()}: sync of version {version} got no weights")
        if version <= self.engine.version and not rewind:
            raise SyncError(f"{self._who()}: version {version} is not newer than the loaded {self.engine.version}")
        before = self._last_fp if self._last_fp is not None else self.fingerprint()
        digest = weights_digest(weights)
        self.engine.version = -1  # unknown until verified
        t0 = time.perf_counter()
        if self.mode == "merged":
            n = self.engine.load_merged(weights)
        else:
            self.engine.load_adapter(weights, tag=f"v{version}")
            n = len(weights)
        push_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        fp = Fingerprint(version=version, logprobs=self.engine.completion_logprobs(self.probe.prompt,
                                                                                 self.probe.completion_ids))
        probe_s = time.perf_counter() - t1
        diff = None
        if expected is not None:
            diff = self.check(fp, expected, version)
        elif digest != self._last_digest and fp.logprobs == before.logprobs:
            raise SyncError(f"{self._who()}: version {version} pushed new weights but the probe log-probs did not "
                            "change at all — the push did not take effect")
        self.engine.version = version
        self._last_digest, self._last_fp = digest, fp
        return SyncResult(actor=self.actor, version=version, fingerprint=fp, max_abs_diff=diff, push_s=push_s,
                          probe_s=probe_s, mode=self.mode, num_tensors=n)


__all__ = [
    "Fingerprint", "Probe", "SyncError", "SyncResult", "WeightSyncer", "make_probe", "reference_logprobs",
    "sync_tolerance", "weights_digest",
]
