"""Model loading in one place: the checkpoint's model and processor from a path, LoRA on the language model.

The checkpoint's family (:func:`polyaudio_rl.core.models.family_of`, from its ``config.json``) says which classes
load it. The same calls load a tiny offline checkpoint and a production one (a local path or a hub id where the
user has one): there is no second code path.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import LoraConfig, ModelConfig
from .models import FamilyError, family_of, family_of_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """The checkpoint cannot be found or loaded; the message names the path."""


def resolve_path(model_cfg: ModelConfig) -> str:
    """The checkpoint path; writes the tiny checkpoint there first when allowed and missing."""
    path = Path(model_cfg.path)
    if (path / "config.json").is_file():
        return str(path)
    if model_cfg.make_tiny_if_missing:
        from .tiny import ensure_tiny

        return str(ensure_tiny(path, model_cfg.tiny_seed, model_cfg.tiny_family))
    if path.exists() or path.is_absolute() or model_cfg.path.startswith((".", "/")):
        raise ModelError(f"model.path {model_cfg.path!r}: no config.json there (expected an audio LLM checkpoint)")
    return model_cfg.path  # a hub id: from_pretrained resolves it where a hub is reachable / cached


def load_processor(path: str | ModelConfig) -> Any:
    """The family's processor (tokenizer + audio feature extractor + chat template), the pad token set."""
    path = resolve_path(path) if isinstance(path, ModelConfig) else str(path)
    try:
        proc = family_of(path).load_processor(path)
    except (OSError, ValueError) as exc:
        if isinstance(exc, FamilyError):
            raise
        raise ModelError(f"cannot load the processor from {path!r}: {exc}") from exc
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return proc


def load_model(model_cfg: ModelConfig | str, dtype: str | None = None, device: str | torch.device = "cpu") -> Any:
    """The family's transformers model (text out) in eval mode on ``device``."""
    if isinstance(model_cfg, ModelConfig):
        path, dtype = resolve_path(model_cfg), dtype or model_cfg.dtype
    else:
        path, dtype = str(model_cfg), dtype or "float32"
    family = family_of(path)
    try:
        model = family.load_model(path, DTYPES[dtype])
    except (OSError, ValueError) as exc:
        if isinstance(exc, FamilyError):
            raise
        raise ModelError(f"cannot load {family.hf_class} from {path!r}: {exc}") from exc
    return model.to(device).eval()


def lora_targets(model: Any, lora: LoraConfig) -> str:
    """The LoRA target regex: ``model.lora.target_modules``, or (empty) the model family's, language model only."""
    if lora.target_modules:
        return lora.target_modules
    return family_of_model(model).lora_target_modules


def add_lora(model: Any, lora: LoraConfig, freeze_audio: bool = True) -> Any:
    """Wrap ``model`` with a PEFT LoRA adapter on the language model only (regex targets).

    Everything but the adapter is frozen; with ``freeze_audio=False`` the audio encoder and projector train too.
    """
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = lora_targets(model, lora)
    family = family_of_model(model)
    peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              bias="none")
    peft_model = get_peft_model(model, peft_cfg)
    if not freeze_audio:
        for module in family.parts(peft_model.get_base_model()).audio_modules:
            module.requires_grad_(True)
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    if n_lora == 0:
        raise ModelError(f"LoRA target regex {targets!r} matched no module")
    return peft_model


def load_policy(model_cfg: ModelConfig, adapter_dir: str | None = None, device: str = "cpu") -> Any:
    """The trainable policy: base model + a fresh LoRA adapter, or a saved PEFT adapter when ``adapter_dir`` is set."""
    model = load_model(model_cfg, device=device)
    if adapter_dir:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return add_lora(model, model_cfg.lora, freeze_audio=model_cfg.freeze_audio_encoder)


@contextlib.contextmanager
def reference_policy(peft_model: Any, start_weights: dict[str, torch.Tensor] | None = None) -> Iterator[Any]:
    """The KL reference on the policy's own module: the base model (the adapter disabled), or with ``start_weights``
    (trainable parameter name → tensor; ``grpo.kl_reference=init``) the adapter training started from, swapped in
    for the duration and the current weights put back after (memory: one more copy of the trainable weights)."""
    if start_weights is None:
        with peft_model.disable_adapter():
            yield peft_model
        return
    params = dict(peft_model.named_parameters())
    current = {n: params[n].detach().clone() for n in start_weights}
    with torch.no_grad():
        for n, t in start_weights.items():
            params[n].copy_(t)
    try:
        yield peft_model
    finally:
        with torch.no_grad():
            for n, t in current.items():
                params[n].copy_(t)


def lora_parameter_count(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
