"""Encoded prompts kept across steps: the learner's processor features and frozen-encoder embeddings, by content.

A learner step can spend most of its time on the prompts, not the policy: on a small language model the Whisper
features and the frozen audio encoder of a few multi-clip prompts cost more than the policy's forward and backward
(figures in docs/benchmarks.md). Neither depends on the trainable weights while the audio encoder, projector and
token embeddings are frozen, so both can be computed *before* the step — while the rollout actors generate
(:meth:`actors.learner.Learner.prefetch`) — and reused when the same prompt comes back in a later epoch.

Every prompt is encoded and embedded on its own (one processor call and one encoder call per prompt), so a prompt's
tensors never depend on which other prompts shared its batch or on whether they came from the cache: a step gives
bit-identical inputs with a warm, cold or evicted cache (exact resume stays exact). Entries are keyed by the
prompt's content (text and PCM bytes), evicted least-recently-used beyond ``budget_mb``. An embedded entry keeps
only the ids and the embeddings (the Whisper features, ~1.5 MB per clip, are not needed once the encoder ran).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Sequence

from .batching import EncodedPrompt, encode_prompts, prompt_embeddings
from .prompts import MultiAudioPrompt


def prompt_key(prompt: MultiAudioPrompt) -> str:
    """A digest of what the learner's inputs are built from: the rendered text and every clip's samples."""
    h = hashlib.blake2b(prompt.text.encode(), digest_size=20)
    for a in prompt.audios:
        h.update(f"|{a.dtype}{a.shape}|".encode())
        h.update(memoryview(a).cast("B") if a.flags.c_contiguous else a.tobytes())
    return h.hexdigest()


def _nbytes(e: EncodedPrompt) -> int:
    ts = (e.input_ids, e.input_features, e.feature_attention_mask, e.embeds)
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


class PromptCache:
    """Least-recently-used store of :class:`EncodedPrompt` by :func:`prompt_key`, at most ``budget_mb``."""

    def __init__(self, budget_mb: float):
        self.budget = int(budget_mb * 2**20)
        self._entries: OrderedDict[tuple[str, bool], EncodedPrompt] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def encode(self, prompts: Sequence[MultiAudioPrompt], processor: Any, embed_model: Any = None
               ) -> list[EncodedPrompt]:
        """``prompts`` encoded (and, with ``embed_model``, embedded), from the cache where they are in it."""
        out = []
        with self._lock:
            for p in prompts:
                key = (prompt_key(p), embed_model is not None)
                e = self._entries.get(key)
                if e is None:
                    self.misses += 1
                    (e,) = encode_prompts([p], processor)
                    if embed_model is not None:  # the embeddings stand for the features from here on
                        (e.embeds,) = prompt_embeddings(embed_model, [e], processor.tokenizer.pad_token_id)
                        e.input_features = e.feature_attention_mask = None
                    self._put(key, e)
                else:
                    self.hits += 1
                    self._entries.move_to_end(key)
                out.append(e)
        return out

    def _put(self, key: Any, e: EncodedPrompt) -> None:
        size = _nbytes(e)
        if size > self.budget:
            return  # larger than the whole budget: used once, never kept
        self._entries[key] = e
        self._bytes += size
        while self._bytes > self.budget:
            _, old = self._entries.popitem(last=False)
            self._bytes -= _nbytes(old)
            self.evictions += 1


__all__ = ["PromptCache", "prompt_key"]
