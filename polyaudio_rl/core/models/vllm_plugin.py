"""PolyAudio's vLLM model classes, registered as out-of-tree models (a ``vllm.general_plugins`` entry point).

Each family lists its classes (:attr:`~polyaudio_rl.core.models.ModelFamily.vllm_classes`: architecture name →
``"module:Class"``); an engine selects one with ``hf_overrides`` (:meth:`ModelFamily.vllm_hf_overrides`) and the
checkpoint keeps its own architecture name. vLLM calls :func:`register` in every process it starts (engine core,
workers, Serve replicas) through the entry point in pyproject.toml; it is idempotent and is also called directly
before an engine is built in-process. Registration is lazy: vLLM imports a class only when an engine uses it.
"""
from __future__ import annotations


def register() -> None:
    """Register every family's vLLM classes with vLLM's ModelRegistry (after each family's
    :meth:`~polyaudio_rl.core.models.ModelFamily.prepare_process`: vLLM reads the checkpoint's config after this)."""
    from vllm import ModelRegistry

    from . import _families

    supported = ModelRegistry.get_supported_archs()
    for family in _families().values():
        family.prepare_process()
        for arch, target in family.vllm_classes.items():
            if arch not in supported:
                ModelRegistry.register_model(arch, target)
