"""Training items → model inputs: prompt encoding, frozen-encoder prompt embeddings, collation into micro-batches.

Sequence construction (the same for SFT and GRPO, and for every worker):

* full ids = the processor-expanded prompt ids (``prompts.processor_inputs``: one audio token per audio position)
  followed by the completion token ids exactly as the rollout produced them — completions are never re-tokenised;
* the response mask covers the completion tokens only (prompt, audio and padding positions carry no loss);
* audio features are concatenated sequence after sequence, each sequence's clips in clip order, so the processor's
  per-sequence clip count always matches the audio-token runs in that row (no ``repeat`` vs ``repeat_interleave``
  mix-up: group members reference their prompt's features, they are never tiled);
* a completion token that happens to be an audio special token (the model family's placeholders: the rollout
  engines suppress them, but an item may come from elsewhere) is never read as an audio slot: the model's input ids
  hold the pad id there (so the model's merge counts only the prompt's placeholders) and ``true_ids`` keeps the token for the forward (:mod:`polyaudio_rl.core.policy_forward`);
* with ``share_prompts`` a micro-batch whose prompt has several completions is packed: each prompt once, with a
  block mask (:mod:`polyaudio_rl.core.packing`).

The forward on these micro-batches is :mod:`polyaudio_rl.core.policy_forward`; the losses are
:mod:`polyaudio_rl.core.grpo_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .models import audio_special_ids, parts_of
from .packing import Packing, pack
from .prompts import MultiAudioPrompt, processor_inputs


class BatchError(ValueError):
    """A training item is malformed; the message names the sample id and the field."""


@dataclass
class TrainItem:
    """One completion to train on.

    ``advantage`` is used by GRPO (ignored by SFT). ``old_logprobs`` are the rollout engine's per-token log-probs
    of ``completion_ids`` (the behaviour policy of the PPO ratio); None means "on-policy": the learner computes
    them itself before the first update of the step. ``pad`` marks a filler item that keeps the number of
    micro-batches equal on every worker (ZeRO collectives need that); it contributes nothing.
    """

    prompt: MultiAudioPrompt  # the Learner also accepts a datagen Sample here and builds the prompt itself
    completion_ids: list[int]
    advantage: float = 0.0
    old_logprobs: list[float] | None = None
    pad: bool = False
    group_id: Any = None

    def check(self, vocab_size: int) -> None:
        sid = self.prompt.sample_id
        if len(self.completion_ids) == 0:
            raise BatchError(f"sample {sid}: completion_ids is empty")
        bad = [t for t in self.completion_ids if not 0 <= int(t) < vocab_size]
        if bad:
            raise BatchError(f"sample {sid}: completion_ids has token ids outside [0, {vocab_size}): {bad[:5]}")
        if self.old_logprobs is not None and len(self.old_logprobs) != len(self.completion_ids):
            raise BatchError(
                f"sample {sid}: old_logprobs has {len(self.old_logprobs)} entries for "
                f"{len(self.completion_ids)} completion tokens"
            )
        if self.old_logprobs is not None and any(not (lp <= 0.0) for lp in self.old_logprobs):
            raise BatchError(f"sample {sid}: old_logprobs must be finite log-probabilities (<= 0)")


@dataclass
class EncodedPrompt:
    input_ids: torch.Tensor  # [L] unpadded, audio placeholders expanded
    input_features: torch.Tensor | None  # [n_clips, mel, frames]; None once ``embeds`` stand for them
    feature_attention_mask: torch.Tensor | None  # [n_clips, frames]
    embeds: torch.Tensor | None = None  # [L, D] merged text+audio input embeddings (frozen encoder cache)


def encode_prompts(prompts: Sequence[MultiAudioPrompt], processor: Any) -> list[EncodedPrompt]:
    """One processor call for all prompts; split back per prompt (ids unpadded, clips in order)."""
    batch = processor_inputs(list(prompts), processor, padding_side="right")
    out, clip = [], 0
    for i, p in enumerate(prompts):
        n = int(batch["attention_mask"][i].sum())
        out.append(
            EncodedPrompt(
                input_ids=batch["input_ids"][i, :n].clone(),
                input_features=batch["input_features"][clip : clip + p.num_clips],
                feature_attention_mask=batch["feature_attention_mask"][clip : clip + p.num_clips],
            )
        )
        clip += p.num_clips
    return out


@dataclass
class MicroBatch:
    """Model inputs plus per-position tensors aligned with the *shifted* targets (position t predicts ids[t+1])."""

    model_inputs: dict[str, torch.Tensor]
    targets: torch.Tensor  # [B, T-1] ids[:, 1:]
    mask: torch.Tensor  # [B, T-1] 1.0 where targets are completion tokens
    old_logp: torch.Tensor  # [B, T-1] rollout log-probs at those positions (0 elsewhere)
    has_old: torch.Tensor  # [B] whether the item came with rollout log-probs
    advantages: torch.Tensor  # [B]
    sample_ids: list[str] = field(default_factory=list)
    prompt_embeds: list[torch.Tensor] | None = None  # per row [P_i, D] when the audio encoder output is cached
    # [B, T] the true ids where a completion holds an audio special token (model_inputs has the pad id there);
    # None when no completion in the batch does
    true_ids: torch.Tensor | None = None
    # shared-prompt packing (polyaudio_rl/core/packing.py): the forward runs one row per prompt; None: one per item
    packing: Packing | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "MicroBatch":
        mi = {k: v.to(device) for k, v in self.model_inputs.items()}
        if dtype is not None and "input_features" in mi:
            mi["input_features"] = mi["input_features"].to(dtype)
        pe = [e.to(device) for e in self.prompt_embeds] if self.prompt_embeds is not None else None
        return MicroBatch(
            mi, self.targets.to(device), self.mask.to(device), self.old_logp.to(device), self.has_old,
            self.advantages.to(device), self.sample_ids, pe,
            self.true_ids.to(device) if self.true_ids is not None else None,
            self.packing.to(device) if self.packing is not None else None,
        )


def collate(items: Sequence[TrainItem], encoded: Sequence[EncodedPrompt], pad_id: int,
            special_ids: Sequence[int] = (), share_prompts: bool = False) -> MicroBatch:
    """Right-padded batch of prompt+completion sequences; ``encoded[i]`` is the prompt encoding of ``items[i]``.

    Completion positions holding one of ``special_ids`` (the audio special tokens) get ``pad_id`` in the model's
    input ids; the true ids are kept in ``true_ids`` (for :func:`polyaudio_rl.core.policy_forward._forward`) and in ``targets`` (what is scored).
    With ``share_prompts``, when a prompt has two or more items here, the forward runs packed
    (:mod:`polyaudio_rl.core.packing`: each prompt once); the targets, masks and log-prob layout stay per item."""
    lengths = [len(e.input_ids) + len(it.completion_ids) for it, e in zip(items, encoded)]
    b, t = len(items), max(lengths)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, t), dtype=torch.long)
    resp = torch.zeros((b, t), dtype=torch.float32)
    old = torch.zeros((b, t), dtype=torch.float32)
    for i, (it, e) in enumerate(zip(items, encoded)):
        p, c = len(e.input_ids), len(it.completion_ids)
        ids[i, :p] = e.input_ids
        ids[i, p : p + c] = torch.as_tensor(it.completion_ids, dtype=torch.long)
        attn[i, : p + c] = 1
        if not it.pad:
            resp[i, p : p + c] = 1.0
        if it.old_logprobs is not None:
            old[i, p : p + c] = torch.as_tensor(it.old_logprobs, dtype=torch.float32)
    targets = ids[:, 1:].clone()
    true_ids = None
    if len(special_ids):
        in_completion = torch.zeros((b, t), dtype=torch.bool)
        for i, (it, e) in enumerate(zip(items, encoded)):
            in_completion[i, len(e.input_ids) : len(e.input_ids) + len(it.completion_ids)] = True
        hit = in_completion & torch.isin(ids, torch.as_tensor(list(special_ids), dtype=torch.long))
        if hit.any():
            true_ids = ids.clone()
            ids = ids.masked_fill(hit, pad_id)
    embeds = [e.embeds for e in encoded]
    embedded = all(e is not None for e in embeds)
    model_inputs = {"input_ids": ids, "attention_mask": attn}
    distinct = list({id(e): e for e in encoded}.values())  # group members share one encoding object
    packing = None
    if share_prompts and len(distinct) < len(items):
        index = {id(e): u for u, e in enumerate(distinct)}
        packing = pack([e.input_ids for e in distinct], [index[id(e)] for e in encoded],
                       [it.completion_ids for it in items], [not it.pad for it in items], pad_id, special_ids)
        encoded = [distinct[u] for u in packing.prompt_of_row]  # what the packed forward reads: one per row
        embeds = [e.embeds for e in encoded]
        model_inputs = {}  # the packed forward builds its own inputs
    if not embedded:  # with the prompts' embeddings the audio encoder does not run: no features to carry
        model_inputs["input_features"] = torch.cat([e.input_features for e in encoded])
        model_inputs["feature_attention_mask"] = torch.cat([e.feature_attention_mask for e in encoded])
    return MicroBatch(
        packing=packing,
        prompt_embeds=embeds if embedded else None,
        model_inputs=model_inputs,
        targets=targets,
        mask=resp[:, 1:],
        old_logp=old[:, 1:],
        has_old=torch.tensor([it.old_logprobs is not None for it in items]),
        advantages=torch.tensor([0.0 if it.pad else float(it.advantage) for it in items], dtype=torch.float32),
        sample_ids=[it.prompt.sample_id for it in items],
        true_ids=true_ids,
    )


def build_microbatches(
    items: Sequence[TrainItem], processor: Any, micro_batch_size: int, num_micro: int | None = None,
    embed_model: Any = None, cache: Any = None, share_prompts: bool = False,
) -> list[MicroBatch]:
    """Split ``items`` into ``num_micro`` micro-batches of at most ``micro_batch_size`` (padding with filler items
    copied from the first one when ``num_micro`` asks for more than the items fill).

    With ``embed_model`` (only valid while the audio encoder, projector and token embeddings are frozen) each
    unique prompt's merged input embeddings are computed once (:func:`prompt_embeddings`) and reused by every
    completion of its group, the reference pass and all μ inner epochs. With ``cache`` (a
    :class:`polyaudio_rl.core.prompt_cache.PromptCache`) each prompt is encoded (and embedded) on its own, or
    taken from the cache: the same tensors either way. ``share_prompts``: see :func:`collate`."""
    if not items:
        raise BatchError("build_microbatches: no items")
    vocab = len(processor.tokenizer)
    for it in items:
        it.check(vocab)
    uniq: dict[int, int] = {}
    prompts: list[MultiAudioPrompt] = []
    for it in items:
        if id(it.prompt) not in uniq:
            uniq[id(it.prompt)] = len(prompts)
            prompts.append(it.prompt)
    if cache is not None:
        enc = cache.encode(prompts, processor, embed_model)
    else:
        enc = encode_prompts(prompts, processor)
        if embed_model is not None:
            for e, emb in zip(enc, prompt_embeddings(embed_model, enc, processor.tokenizer.pad_token_id)):
                e.embeds = emb
    need = -(-len(items) // micro_batch_size)
    num_micro = num_micro or need
    if num_micro < need:
        raise BatchError(f"{len(items)} items do not fit in {num_micro} micro-batches of {micro_batch_size}")
    pad_id = processor.tokenizer.pad_token_id
    special = audio_special_ids(processor.tokenizer)
    if pad_id is None or pad_id in special:
        raise BatchError(f"the tokenizer's pad id {pad_id} cannot stand in for audio special tokens in completions")
    out = []
    for m in range(num_micro):
        chunk = list(items[m * micro_batch_size : (m + 1) * micro_batch_size])
        if not chunk:  # filler: same shapes as a real item, zero mask
            first = items[0]
            chunk = [TrainItem(first.prompt, first.completion_ids, 0.0, first.old_logprobs, pad=True)]
        out.append(collate(chunk, [enc[uniq[id(it.prompt)]] for it in chunk], pad_id, special, share_prompts))
    return out


def _core(model: Any) -> Any:
    """The language model, audio modules and embeddings (:class:`~polyaudio_rl.core.models.ModelParts`) of the model
    inside a DeepSpeed engine / PeftModel, as its family names them."""
    return parts_of(model)


class _Captured(Exception):
    pass


@torch.no_grad()
def prompt_embeddings(model: Any, encoded: Sequence[EncodedPrompt], pad_id: int) -> list[torch.Tensor]:
    """Each prompt's merged (text + audio) input embeddings, [L_i, D], as the model itself builds them.

    One batched call of the model's own forward per shard (so ZeRO-3's collectives stay matched across ranks):
    a pre-hook on the language model captures its ``inputs_embeds`` and stops the pass there (under ZeRO-3 the
    pass runs to the end instead, so DeepSpeed's parameter fetch/release hooks see a complete forward).
    """
    core = _core(model)
    abort = not any(hasattr(p, "ds_id") for p in core.parameters())
    device = next(core.language_model.parameters()).device
    n, lmax = len(encoded), max(len(e.input_ids) for e in encoded)
    ids = torch.full((n, lmax), pad_id, dtype=torch.long)
    attn = torch.zeros((n, lmax), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.input_ids)] = e.input_ids
        attn[i, : len(e.input_ids)] = 1
    feats = torch.cat([e.input_features for e in encoded]).to(device, next(core.audio_tower.parameters()).dtype)
    fmask = torch.cat([e.feature_attention_mask for e in encoded]).to(device)
    box: dict[str, torch.Tensor] = {}

    def hook(_module, _args, kwargs):
        box["embeds"] = kwargs["inputs_embeds"]
        if abort:
            raise _Captured

    handle = core.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    modes = {m: m.training for m in model.modules()}
    model.eval()  # a frozen encoder is deterministic: no dropout / layer-drop, no RNG consumed
    try:
        # the top-level module, not `core`: ZeRO-3 gathers parameters correctly only from the wrapped module down
        model(input_ids=ids.to(device), attention_mask=attn.to(device), input_features=feats,
              feature_attention_mask=fmask, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    if "embeds" not in box:
        raise RuntimeError("prompt_embeddings: the language model was never called with inputs_embeds")
    return [box["embeds"][i, : len(e.input_ids)].detach().clone() for i, e in enumerate(encoded)]
