"""PolyAudio's Qwen2-Audio for vLLM, registered as out-of-tree models (a ``vllm.general_plugins`` entry point).

Two architectures, both vLLM's own ``Qwen2AudioForConditionalGeneration`` with the audio encoder run on each
clip's own length (:mod:`polyaudio_rl.core.audio_encoder`, as the learner runs it):

* :data:`ARCH` — the rollout engines with merged sync and the served policy;
* :data:`LORA_ARCH` — also declares the LoRA interface (vLLM 0.32's class does not implement ``SupportsLoRA``, so
  it cannot serve a PEFT adapter): the packed modules (qkv_proj = q/k/v, gate_up_proj = gate/up) and which prefix is
  the language model (adapters apply there; the audio tower and projector stay frozen, as in training). Used by
  ``rollout.sync_mode=adapter`` (``enable_lora``).

An engine picks one with ``hf_overrides={"architectures": [...]}`` (:func:`hf_overrides`); the checkpoint itself
keeps its hub architecture name. vLLM calls :func:`register` in every process it starts (engine core, workers,
Serve replicas) through the entry point in pyproject.toml; :func:`register` is idempotent and is also called
directly before an engine is built in-process.
"""
from __future__ import annotations

ARCH = "PolyAudioQwen2AudioForConditionalGeneration"
LORA_ARCH = "PolyAudioQwen2AudioLoRAForConditionalGeneration"
_CLASSES = {ARCH: "PolyAudioQwen2Audio", LORA_ARCH: "PolyAudioQwen2AudioLoRA"}


def register() -> None:
    """Register :data:`ARCH` and :data:`LORA_ARCH` with vLLM's ModelRegistry (lazily: the classes are imported by
    the engine)."""
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    for arch, cls in _CLASSES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, f"actors.vllm_qwen2_audio_model:{cls}")


def hf_overrides(lora: bool = False) -> dict[str, list[str]]:
    """The engine argument that selects PolyAudio's class (an engine built in this process needs :func:`register`
    first; processes vLLM starts register through the entry point)."""
    return {"architectures": [LORA_ARCH if lora else ARCH]}
