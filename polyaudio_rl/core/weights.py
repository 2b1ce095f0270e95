"""Weights in one place: hub naming, LoRA merge, adapter export, shape checks.

Names. transformers names a model's modules one way, the checkpoint files (and vLLM's loader) another; the model
family says how (:func:`hub_key`). A PEFT model adds ``base_model.model.`` and ``.default`` (:func:`peft_to_hub`).

Merge. One formula, PEFT's: ``W + get_delta_weight()`` (= ``B @ A · alpha / r`` for a linear layer), used by the
learner (:func:`merged_lora_weights`, under a ZeRO-3 gather when needed), by the HF rollout engine for an adapter
that arrives as bare tensors (:func:`apply_lora_tensors`, the same ``B @ A · scale``), and by ``eval.merge`` through
``merge_and_unload``.

Every user of these — learner, weight sync, rollout engines, ``eval.merge``, the tiny writer — imports them from
here; a push whose names or shapes do not fit the checkpoint is a :class:`SyncError` naming the tensor.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Any, Callable, ContextManager, Iterable

import torch


class SyncError(RuntimeError):
    """A weight push that cannot or did not take effect (wrong names or shapes, probe mismatch, stale version)."""


# ------------------------------------------------------------------------------------------------------- naming
def hub_key(name: str, family: Any) -> str:
    """A transformers module/parameter name → the checkpoint's name for it (what vLLM's loader expects), by the
    model family's rule (:meth:`polyaudio_rl.core.models.ModelFamily.hub_key`)."""
    return family.hub_key(name)


def peft_to_hub(name: str, family: Any) -> str:
    """A PEFT parameter or module name (``base_model.model.…q_proj.lora_A.default.weight``) → hub name."""
    return hub_key(name.replace(".default.", ".").removesuffix(".default").removeprefix("base_model.model."), family)


def hub_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A transformers model's state dict under hub names (contiguous copies), as written to safetensors."""
    from .models import family_of_model

    family = family_of_model(model)
    return {hub_key(k, family): v.detach().contiguous().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------- LoRA
def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``B @ A · scale`` in float32: the change LoRA makes to a linear layer's weight (PEFT's delta weight)."""
    return (b.float() @ a.float()) * scale


def lora_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Hub-named LoRA tensors (``…q_proj.lora_A.weight``) → ``{"…q_proj.weight": {"A": a, "B": b}}``."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, t in tensors.items():
        if ".lora_A." not in k and ".lora_B." not in k:
            raise SyncError(f"adapter sync got a non-LoRA tensor {k!r} (expected '...lora_A.weight'/'...lora_B.weight')")
        mod, ab = k.rsplit(".lora_", 1)
        pairs.setdefault(mod + ".weight", {})[ab[0]] = t
    incomplete = [k for k, ab in pairs.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise SyncError(f"adapter sync: missing lora_A or lora_B for {incomplete[:3]}")
    return pairs


def apply_lora_tensors(params: dict[str, torch.Tensor], base: dict[str, torch.Tensor],
                       tensors: dict[str, torch.Tensor], scale: float) -> None:
    """Make ``tensors`` the active adapter of hub-named ``params`` in place: ``W = W_base + B @ A · scale``.

    ``base`` keeps the original of every weight an adapter has touched, so the previous adapter is undone first.
    """
    pairs = lora_pairs(tensors)
    missing = [k for k in pairs if k not in params]
    if missing:
        raise SyncError(f"adapter sync: the model has no base weight {missing[:3]}")
    with torch.no_grad():
        for name, orig in base.items():
            params[name].copy_(orig)
        for name, ab in pairs.items():
            p = params[name]
            base.setdefault(name, p.detach().clone())
            p.copy_((base[name].float() + lora_delta(ab["A"], ab["B"], scale).to(p.device)).to(p.dtype))


def lora_tensors(named_params: Iterable[tuple[str, torch.Tensor | None]], family: Any) -> dict[str, torch.Tensor]:
    """The LoRA tensors among ``(PEFT name, tensor)`` pairs, under ``family``'s hub names, on CPU (what an adapter
    sync sends)."""
    return {peft_to_hub(n, family): t.detach().cpu().clone() for n, t in named_params if "lora_" in n and t is not None}


def merged_lora_weights(peft_model: Any, dtype: torch.dtype | None = None,
                        gather: Callable[[list[torch.Tensor]], ContextManager] | None = None) -> dict[str, torch.Tensor]:
    """Every LoRA-adapted weight with its adapter folded in (``W + get_delta_weight()``), hub names, on CPU.

    ``gather(params)`` is a context manager that materialises partitioned parameters (DeepSpeed ZeRO-3's
    ``GatheredParameters``); ``dtype`` defaults to the base weight's.
    """
    from peft.tuners.lora import LoraLayer

    from .models import family_of_model

    family = family_of_model(peft_model)
    out: dict[str, torch.Tensor] = {}
    for mname, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or not hasattr(module, "base_layer"):
            continue
        base = module.base_layer.weight
        params = [base] + list(module.lora_A.parameters()) + list(module.lora_B.parameters())
        with (gather(params) if gather else contextlib.nullcontext()):
            w = base.detach().float() + module.get_delta_weight(module.active_adapters[0]).detach().float()
            out[peft_to_hub(mname + ".weight", family)] = w.to(dtype or base.dtype).cpu().clone()
    if not out:
        raise SyncError("merged sync: the model has no LoRA layers to merge")
    return out


# ------------------------------------------------------------------------------------------------------- checks
def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """{hub name: shape} of the checkpoint's safetensors files (read lazily, no tensor data)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(glob.glob(os.path.join(model_path, "*.safetensors"))):
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                shapes[k] = tuple(fh.get_slice(k).get_shape())
    return shapes


def check_hub_weights(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every pushed tensor must be a checkpoint weight (hub name) with the checkpoint's (un-padded) shape."""
    if not shapes:
        return  # a hub id without local files: vLLM's loader checks names itself
    unknown = [k for k in weights if k not in shapes]
    if unknown:
        raise SyncError(f"merged sync: {len(unknown)} names are not weights of the checkpoint, e.g. {unknown[:3]} "
                        "(expected the checkpoint's own names)")
    bad = [f"{k} {tuple(t.shape)} != {shapes[k]}" for k, t in weights.items() if tuple(t.shape) != shapes[k]]
    if bad:
        raise SyncError(f"merged sync: shape mismatch for {len(bad)} tensors, e.g. {bad[:3]}")


# ------------------------------------------------------------------------------------------------------- export
def write_peft_adapter(tensors: dict[str, torch.Tensor], path: str, rank: int, alpha: int) -> str:
    """A PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``) from hub-named tensors."""
    from safetensors.torch import save_file

    for k, t in tensors.items():
        if ".lora_A." in k and t.shape[0] != rank:
            raise SyncError(f"adapter tensor {k} has rank {t.shape[0]}, config says model.lora.rank={rank}")
    lora_pairs(tensors)  # every tensor is a LoRA A or B, each with its partner
    modules = sorted({k.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for k in tensors})
    os.makedirs(path, exist_ok=True)
    state = {("base_model.model." + k if not k.startswith("base_model.model.") else k): t.detach().contiguous().cpu()
             for k, t in tensors.items()}
    save_file(state, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
           "target_modules": modules, "bias": "none", "base_model_name_or_path": None}
    with open(os.path.join(path, "adapter_config.json"), "w") as fh:
        json.dump(cfg, fh)
    return path


__all__ = [
    "SyncError", "apply_lora_tensors", "check_hub_weights", "checkpoint_shapes", "hub_key", "hub_state_dict",
    "lora_delta", "lora_pairs", "lora_tensors", "merged_lora_weights", "peft_to_hub", "write_peft_adapter",
]
