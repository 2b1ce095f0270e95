"""Qwen2-Audio's audio features and encoder, computed on each clip's own length instead of a padded 30 s window.

Qwen2-Audio's encoder (Whisper's) takes every clip as 3000 mel frames (30 s) and masks the padding's keys in its
attention: the outputs at a clip's real positions depend on its real frames only, but every clip pays for 1500
positions — on a 2 s clip 15× the work of its 100 positions in the linear layers and ~200× in attention. The
tiny checkpoint's rollouts spent ~70 % of a fresh prompt's generate there.

:func:`use_length_aware_encoder` replaces the encoder's ``forward`` (on one module instance, weights and their
names untouched) with :func:`length_aware_forward`: each clip runs alone on its own positions — the convolutions
over the frames they read (the clip's frames plus the two after it, as in the padded window), the position
embeddings of those positions, attention over them with nothing to mask, the same pooling and final norm. The same
arithmetic as the padded window restricted to the positions the model keeps, so the embeddings agree with the
stock encoder's to float rounding (``tests/polyaudio_rl/core/models/test_whisper_encoder.py``), and a clip's embedding no
longer depends on the other clips of its batch (under ZeRO-3, where every submodule call is a collective, the batch
runs in one call cut to its longest clip instead). Positions past a clip's length come back as zeros; both callers
(transformers' ``Qwen2AudioModel`` and vLLM's ``Qwen2AudioForConditionalGeneration``) keep only the first
``output_length`` positions of each clip.

The mel features before it had the same waste: the Whisper feature extractor pads every clip with zeros to
480,000 samples and runs the STFT over all of them, which costs more than the length-aware encoder itself.
:func:`use_length_aware_features` replaces its spectrogram step (:func:`length_aware_fbank`): each waveform's STFT
runs up to 600 samples past its last non-zero sample; every later frame reads zeros only, so its log-mel is the
floor the stock extractor gives it too (the tail's last frame carries that value), and the per-clip maximum that
sets the floor is the same. Same frames, same values (to float rounding).

Every engine that turns audio into embeddings installs both: the learner, SFT and the HF engine through
:func:`polyaudio_rl.core.model.load_model` / :func:`~polyaudio_rl.core.model.load_processor`, the vLLM rollout
engines and the served policy through the model class and processing info in :mod:`polyaudio_rl.core.models.qwen2_audio_vllm`.
So rollouts, probes and training see the same audio embeddings.
"""
from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
from torch import nn


def key_lengths(attention_mask: torch.Tensor | None, num_positions: int) -> list[int] | None:
    """Each clip's number of real positions from the encoder's attention mask, or ``None`` when the mask does not
    say (no mask: every clip fills the window; a mask whose kept keys are not a prefix: not a padding mask).

    The callers build the mask over keys only: 4-D ``[B, 1, Q, K]`` (or ``[B, 1, 1, K]``), additive (0 = keep,
    -inf / the dtype's min = drop) or boolean (True = keep)."""
    if attention_mask is None:
        return None
    m = attention_mask
    while m.dim() > 2:
        m = m[:, 0]  # the first query row: the key mask (every clip has at least one real position)
    if m.shape[-1] != num_positions:
        return None
    keep = m if m.dtype == torch.bool else m == 0
    lengths = keep.sum(-1)
    prefix = torch.arange(num_positions, device=keep.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, keep):
        return None
    return [int(n) for n in lengths.tolist()]


def _encode(tower: Any, features: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder on the first ``n`` positions of a batch of mel frames ``[B, mel, frames]``: ``[B, n // 2, D]``.

    Position s of the second (stride-2) convolution reads the first convolution's outputs 2s-1 .. 2s+1, which read
    frames 2s-2 .. 2s+2: positions 0 .. n-1 need frames 0 .. 2n, all inside the window when n < 1500. ``mask`` is
    the caller's key mask (cut to the ``n`` positions) when the batch's clips are shorter than ``n``; one clip of
    ``n`` real positions needs none."""
    frames = min(features.shape[-1], 2 * n + 2)
    x = features[:, :, :frames].to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
    x = nn.functional.gelu(tower.conv1(x))
    x = nn.functional.gelu(tower.conv2(x))
    h = x[:, :, :n].permute(0, 2, 1) + tower.embed_positions.weight[:n]
    h = nn.functional.dropout(h, p=tower.dropout, training=tower.training)
    if mask is not None:
        mask = mask[..., :n]
        if mask.shape[-2] > 1:
            mask = mask[..., :n, :]
    for layer in tower.layers:
        if tower.training and torch.rand([]) < tower.layerdrop:
            continue
        h = layer(h, mask)
        if isinstance(h, tuple):
            h = h[0]
    h = tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1)
    return tower.layer_norm(h)


def clip_outputs(tower: Any, input_features: Any, lengths: list[int]) -> list[torch.Tensor]:
    """Each clip's encoder output ``[n_i // 2, D]`` (before the projector): clip i's mel frames
    ``input_features[i]`` and its number of real positions ``n_i`` (the second convolution's output length,
    ``_get_feat_extract_output_lengths(frames)[0]``)."""
    return [_encode(tower, input_features[i][None], int(n))[0] for i, n in enumerate(lengths)]


def length_aware_forward(tower: Any, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         **kwargs: Any) -> Any:
    """The encoder's forward, each clip on its own positions (see the module docstring). Falls back to the stock
    forward when the mask does not give per-clip lengths, or when asked for attentions / hidden states."""
    from transformers.modeling_outputs import BaseModelOutput

    stock = type(tower).forward
    lengths = key_lengths(attention_mask, tower.config.max_source_positions)  # not the weight's shape: under
    # ZeRO-3 a partitioned parameter has none
    if lengths is None or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        return stock(tower, input_features, attention_mask=attention_mask, **kwargs)
    if hasattr(tower.conv1.weight, "ds_id"):
        # ZeRO-3: each submodule call is a collective, so the whole batch runs in one call, cut to its longest clip
        # with the caller's key mask (same values to float rounding, but then batch-dependent at that level)
        return BaseModelOutput(last_hidden_state=_encode(tower, input_features, max(lengths), attention_mask))
    outs = clip_outputs(tower, input_features, lengths)
    width = max(o.shape[0] for o in outs)
    hidden = outs[0].new_zeros((len(outs), width, outs[0].shape[-1]))
    for i, o in enumerate(outs):
        hidden[i, : o.shape[0]] = o
    return BaseModelOutput(last_hidden_state=hidden)


def use_length_aware_encoder(tower: Any) -> Any:
    """Install :func:`length_aware_forward` on this encoder instance (idempotent); returns the encoder."""
    if not getattr(tower, "_polyaudio_length_aware", False):
        tower.forward = types.MethodType(length_aware_forward, tower)
        tower._polyaudio_length_aware = True
    return tower


# An STFT frame (n_fft 400, hop 160, centred) reads 200 samples either side of its centre; past a waveform's last
# non-zero sample + 600 there is a frame that reads zeros only, and the reflection at the cut mirrors zeros too.
_TAIL = 600


def length_aware_fbank(fe: Any, waveform: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The feature extractor's ``_torch_extract_fbank_features`` on the zero-padded waveform(s) ``[B, N]`` / ``[N]``,
    each computed only up to its last non-zero sample + :data:`_TAIL` (see the module docstring)."""
    stock = type(fe)._polyaudio_stock_fbank
    batch = waveform if waveform.ndim == 2 else waveform[None]
    hop, n = fe.hop_length, batch.shape[-1]
    out = None
    for i, w in enumerate(batch):
        nz = np.flatnonzero(w)
        cut = -(-((int(nz[-1]) + 1 if nz.size else 0) + _TAIL) // hop) * hop  # a whole number of hops
        if cut >= n:
            row = stock(fe, w, device)
        else:
            short = stock(fe, w[:cut], device)  # [mel, cut // hop]; its last frame reads zeros only
            row = np.empty((short.shape[0], n // hop), dtype=short.dtype)
            row[:, : short.shape[1]] = short
            row[:, short.shape[1]:] = short[:, -1:]
        if out is None:
            out = np.empty((len(batch),) + row.shape, dtype=row.dtype)
        out[i] = row
    return out if waveform.ndim == 2 else out[0]


def use_length_aware_features(feature_extractor: Any) -> Any:
    """Install :func:`length_aware_fbank` as the spectrogram step of this feature extractor's class (idempotent; a
    no-op on a class without a torch spectrogram step); returns the extractor.

    On the class, not the instance: a processor saves its extractor's instance attributes as its JSON config. The
    features are the stock ones (to float rounding), so every extractor of the class in this process may share it;
    the stock step stays reachable as ``_polyaudio_stock_fbank``."""
    cls = type(feature_extractor)
    if hasattr(cls, "_torch_extract_fbank_features") and "_polyaudio_stock_fbank" not in cls.__dict__:
        cls._polyaudio_stock_fbank = cls._torch_extract_fbank_features
        cls._torch_extract_fbank_features = length_aware_fbank
    return feature_extractor
