"""The policy's forward on a micro-batch (:mod:`polyaudio_rl.core.batching`): token log-probs and entropies.

The hooks that make one forward serve every layout: a packed micro-batch (one row per prompt, a 4D block mask,
:mod:`polyaudio_rl.core.packing`), cached prompt embeddings (the frozen audio encoder does not run), completion
tokens that are audio special tokens (their own text embedding is put back), and an output projection that runs on
scored positions only. The math itself lives in :mod:`polyaudio_rl.core.core_algos`.
"""
from __future__ import annotations

from typing import Any

import torch

from . import core_algos as ca
from .batching import BatchError, MicroBatch, _core
from .packing import packed_inputs


def train_mode(model: Any, freeze_audio: bool = True) -> None:
    """``model.train()``, but a frozen audio encoder and projector stay in eval mode (no dropout/layer-drop)."""
    model.train()
    if freeze_audio:
        core = _core(model)
        for module in core.audio_modules:
            module.eval()


def _call_restoring(model: Any, inputs: dict[str, torch.Tensor], ids: torch.Tensor,
                    true_ids: torch.Tensor | None) -> Any:
    """``model(**inputs)``; where ``true_ids`` differs from ``ids`` (a completion's audio special token, fed as the
    pad id so the model's merge counts only the prompt's placeholders), a pre-hook on the language model puts that
    token's own text embedding back."""
    if true_ids is None:
        return model(**inputs, use_cache=False)
    core = _core(model)
    fix = (true_ids != ids).unsqueeze(-1)

    def restore(_module, args, kwargs):
        emb = kwargs["inputs_embeds"]
        true = core.get_input_embeddings()(true_ids.to(emb.device)).to(emb.dtype)
        kwargs["inputs_embeds"] = torch.where(fix.to(emb.device), true, emb)
        return args, kwargs

    handle = core.language_model.register_forward_pre_hook(restore, with_kwargs=True)
    try:
        return model(**inputs, use_cache=False)
    finally:
        handle.remove()


def _forward(model: Any, mb: MicroBatch) -> Any:
    """The model's forward on one micro-batch: logits [B, T, V], or with ``mb.packing`` those of the packed rows.

    Completion positions whose true id is an audio special token (``mb.true_ids``) reach the language model with
    that token's own text embedding, never as audio slots: without the cache, the model merges audio features into
    the prompt's placeholders only (its input ids hold the pad id at those positions) and a pre-hook on the
    language model puts the true tokens' embeddings back; with the cache, the completion embeddings are looked up
    from the true ids directly. Both give the same inputs to the language model."""
    pk = mb.packing
    if pk is not None:
        core = _core(model)
        impl = getattr(core.language_model.config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise BatchError(f"learner.share_prompts packs a micro-batch with a 4D block mask, which {impl!r} attention "
                             "does not take; use SDPA or eager attention, or set learner.share_prompts=false")
        dtype = core.get_input_embeddings().weight.dtype
        if mb.prompt_embeds is not None:
            return model(**packed_inputs(core, pk, mb.prompt_embeds, dtype), use_cache=False)
        inputs = {"input_ids": pk.ids, "attention_mask": pk.attention_mask(dtype, pk.ids.device),
                  "position_ids": pk.position_ids, **mb.model_inputs}
        return _call_restoring(model, inputs, pk.ids, pk.true_ids)
    if mb.prompt_embeds is None:
        return _call_restoring(model, mb.model_inputs, mb.model_inputs["input_ids"], mb.true_ids)
    ids = mb.model_inputs["input_ids"] if mb.true_ids is None else mb.true_ids
    emb = _core(model).get_input_embeddings()(ids)  # completion (and padding) positions; prompts replaced below
    rows = [torch.cat([pe.to(emb.dtype), emb[i, pe.shape[0]:]]) for i, pe in enumerate(mb.prompt_embeds)]
    inputs_embeds = torch.stack(rows)
    if torch.is_grad_enabled() and not inputs_embeds.requires_grad:  # reentrant grad checkpointing needs one
        inputs_embeds.requires_grad_(True)
    return model(inputs_embeds=inputs_embeds, attention_mask=mb.model_inputs["attention_mask"], use_cache=False)


def token_logprobs(model: Any, mb: MicroBatch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(target) at every shifted position ([B, T-1], 0 outside the mask) and, optionally, the entropy there.

    The output projection runs on scored positions only: a pre-hook on ``lm_head`` cuts its input to the batch's
    first completion position on (not every family's forward has ``logits_to_keep``), or for a packed micro-batch
    gathers exactly the positions that score a target (``Packing.src``); the vocabulary softmax runs only at
    completion positions. The logits of a 7B prompt of 3,000 tokens would be 3,000 × 152k values a sequence.
    """
    sel = mb.mask > 0
    scored = sel.any(0).nonzero()
    first = int(scored[0]) if len(scored) else 0  # shifted position j is predicted by the logits at position j
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    src = mb.packing.src if mb.packing is not None else None

    def cut(_module, args):
        h = args[0]
        h = h.reshape(-1, h.shape[-1])[src].unsqueeze(0) if src is not None else h[:, first:]
        return (h,) + tuple(args[1:])

    handle = m.get_output_embeddings().register_forward_pre_hook(cut) if first or src is not None else None
    try:
        logits = _forward(model, mb).logits
    finally:
        if handle is not None:
            handle.remove()
    # the scored positions' logits, in the mask's row-major order
    picked = logits[0] if src is not None else logits[:, :-1][sel[:, first:]]
    logp = torch.zeros(sel.shape, dtype=torch.float32, device=logits.device)
    ent = torch.zeros_like(logp) if with_entropy else None
    if picked.shape[0]:
        logp = logp.masked_scatter(sel, ca.logprobs_from_logits(picked, mb.targets[sel]))
        if with_entropy:
            with torch.no_grad():
                ent = ent.masked_scatter(sel, ca.entropy_from_logits(picked.detach()))
    else:  # a filler micro-batch: keep the graph connected so backward hooks (ZeRO reduction) still fire
        logp = logp + 0.0 * logits.sum()
    return logp, ent
