"""Model loading in one place: Qwen2-Audio + its processor from a path, LoRA on the language model.

The same calls load the tiny offline checkpoint and Qwen2-Audio-7B-Instruct (a local path or a hub id where the
user has one): there is no second code path.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from .audio_encoder import use_length_aware_encoder, use_length_aware_features
from .config import LoraConfig, ModelConfig

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

        return str(ensure_tiny(path, model_cfg.tiny_seed))
    if path.exists() or path.is_absolute() or model_cfg.path.startswith((".", "/")):
        raise ModelError(f"model.path {model_cfg.path!r}: no config.json there (expected a Qwen2-Audio checkpoint)")
    return model_cfg.path  # a hub id: from_pretrained resolves it where a hub is reachable / cached


def load_processor(path: str | ModelConfig) -> Any:
    """``Qwen2AudioProcessor`` (tokenizer + 128-mel Whisper feature extractor + chat template), the features computed
    on each clip's own length (:mod:`polyaudio_rl.core.audio_encoder`, as the vLLM engines compute them)."""
    from transformers import AutoProcessor

    path = resolve_path(path) if isinstance(path, ModelConfig) else str(path)
    try:
        proc = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the processor from {path!r}: {exc}") from exc
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    use_length_aware_features(proc.feature_extractor)
    return proc


def load_model(model_cfg: ModelConfig | str, dtype: str | None = None, device: str | torch.device = "cpu") -> Any:
    """``Qwen2AudioForConditionalGeneration.from_pretrained`` in eval mode on ``device``, its audio encoder run on
    each clip's own length (:mod:`polyaudio_rl.core.audio_encoder`, as the vLLM engines run it)."""
    from transformers import Qwen2AudioForConditionalGeneration

    if isinstance(model_cfg, ModelConfig):
        path, dtype = resolve_path(model_cfg), dtype or model_cfg.dtype
    else:
        path, dtype = str(model_cfg), dtype or "float32"
    try:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load Qwen2-Audio from {path!r}: {exc}") from exc
    use_length_aware_encoder(model.model.audio_tower)
    return model.to(device).eval()


def add_lora(model: Any, lora: LoraConfig, freeze_audio: bool = True) -> Any:
    """Wrap ``model`` with a PEFT LoRA adapter on the language model only (regex targets).

    Everything but the adapter is frozen; with ``freeze_audio=False`` the audio tower and projector train too.
    """
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    peft_cfg = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        bias="none",
    )
    peft_model = get_peft_model(model, peft_cfg)
    if not freeze_audio:
        for name, p in peft_model.named_parameters():
            if "audio_tower" in name or "multi_modal_projector" in name:
                p.requires_grad_(True)
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    if n_lora == 0:
        raise ModelError(f"LoRA target regex {lora.target_modules!r} matched no module")
    return peft_model


def load_policy(model_cfg: ModelConfig, adapter_dir: str | None = None, device: str = "cpu") -> Any:
    """The trainable policy: base model + a fresh LoRA adapter, or a saved PEFT adapter when ``adapter_dir`` is set."""
    model = load_model(model_cfg, device=device)
    if adapter_dir:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return add_lora(model, model_cfg.lora, freeze_audio=model_cfg.freeze_audio_encoder)


@contextlib.contextmanager
def reference_policy(peft_model: Any) -> Iterator[Any]:
    """The reference (base) model at no extra memory: the same module with the adapter disabled."""
    with peft_model.disable_adapter():
        yield peft_model


def lora_parameter_count(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
