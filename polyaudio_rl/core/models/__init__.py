"""Model families: the registry that recognises a checkpoint's family from its ``config.json``.

    family_of("artifacts/tiny-qwen2-audio").name   # 'qwen2_audio'
    get_family("qwen2_5_omni").write_tiny(out)

A checkpoint of an architecture no family recognises is a :class:`FamilyError` listing the supported families.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .base import FamilyError, ModelFamily, ModelParts, read_config, special_token_ids

DEFAULT_FAMILY = "qwen2_audio"


@functools.lru_cache(maxsize=None)
def _families() -> dict[str, ModelFamily]:
    from .qwen2_audio import Qwen2AudioFamily

    out: dict[str, ModelFamily] = {}
    for cls in (Qwen2AudioFamily, *_plugin_families()):
        out[cls.name] = cls()
    return out


def _plugin_families() -> tuple[type[ModelFamily], ...]:
    """The other families, in registry order: each is one module holding one :class:`ModelFamily` subclass (a
    module not in this tree is skipped, so a family lands as its module alone)."""
    import importlib

    found = []
    for mod, cls in (("qwen2_5_omni", "Qwen25OmniFamily"), ("voxtral", "VoxtralFamily")):
        try:
            m = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
            continue
        found.append(getattr(m, cls))
    return tuple(found)


def family_names() -> list[str]:
    """Registered family names, in registry order."""
    return list(_families())


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; an unknown name is a :class:`FamilyError` listing the registered ones."""
    fams = _families()
    if name not in fams:
        raise FamilyError(f"unknown model family {name!r}; supported: {', '.join(fams)}")
    return fams[name]


def family_for_config(config: dict[str, Any], where: str = "checkpoint") -> ModelFamily:
    """The family whose ``model_type`` / ``architectures`` match ``config`` (a ``config.json`` dict)."""
    for fam in _families().values():
        if fam.recognises(config):
            return fam
    rows = "; ".join(f"{f.name} ({', '.join(f.architectures)})" for f in _families().values())
    raise FamilyError(f"{where}: model_type {config.get('model_type')!r}, architectures "
                      f"{config.get('architectures')} is not a supported audio LLM. Supported families: {rows}")


@functools.lru_cache(maxsize=64)
def _family_of_path(path: str, mtime: float) -> ModelFamily:
    return family_for_config(read_config(path), where=path)


def family_of(path: Any) -> ModelFamily:
    """The family of the checkpoint at ``path`` (a directory, a hub id in the local hub cache, or a
    :class:`~polyaudio_rl.core.config.ModelConfig`, whose tiny checkpoint is written first when allowed)."""
    if hasattr(path, "make_tiny_if_missing"):
        from polyaudio_rl.core.model import resolve_path

        path = resolve_path(path)
    path = str(path)
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        return _family_of_path(path, cfg.stat().st_mtime)
    try:
        from transformers.utils import cached_file

        local = cached_file(path, "config.json")
    except (OSError, ValueError) as exc:
        raise FamilyError(f"{path}: no config.json there or in the hub cache ({exc})") from exc
    return _family_of_path(str(Path(local).parent), Path(local).stat().st_mtime)


def family_of_model(model: Any) -> ModelFamily:
    """The family of a loaded transformers model (PEFT / DeepSpeed wrappers peeled off), from its config."""
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    cfg = m.config
    return family_for_config({"model_type": cfg.model_type, "architectures": getattr(cfg, "architectures", None)},
                             where=type(m).__name__)


def parts_of(model: Any) -> ModelParts:
    """:meth:`ModelFamily.parts` of a loaded model, wrappers peeled off."""
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return family_of_model(m).parts(m)


def all_special_tokens() -> tuple[str, ...]:
    """Every registered family's multimodal placeholder tokens (what no completion may contain)."""
    return tuple(dict.fromkeys(t for f in _families().values() for t in f.audio_special_tokens))


def audio_special_ids(tokenizer: Any) -> list[int]:
    """Ids of the multimodal placeholder tokens this tokenizer has, sorted: every registered family's
    (:func:`all_special_tokens`; a family's placeholders are never ordinary text in another family's vocabulary), so
    the answer needs the tokenizer only."""
    return special_token_ids(tokenizer, all_special_tokens())


__all__ = [
    "DEFAULT_FAMILY", "FamilyError", "ModelFamily", "ModelParts", "all_special_tokens", "audio_special_ids",
    "family_for_config", "family_names", "family_of", "family_of_model", "get_family", "parts_of",
]
