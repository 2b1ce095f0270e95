"""A LoRA-capable Qwen2-Audio for vLLM, registered as an out-of-tree model (a ``vllm.general_plugins`` entry point).

vLLM 0.32's ``Qwen2AudioForConditionalGeneration`` does not implement ``SupportsLoRA``, so it cannot serve a PEFT
adapter. Its language model is vLLM's ``Qwen2ForCausalLM``, whose linear layers are LoRA-capable; this subclass only
declares the interface: the packed modules (qkv_proj = q/k/v, gate_up_proj = gate/up) and which prefix is the
language model (adapters apply there; the audio tower and projector stay frozen, as in training).

It is registered under its own architecture name, :data:`LORA_ARCH`, and chosen per engine with
``hf_overrides={"architectures": [LORA_ARCH]}`` — engines without LoRA keep vLLM's own class untouched.
vLLM calls :func:`register` in every process it starts (engine core, workers, Serve replicas) through the entry point
in pyproject.toml; :func:`register` is idempotent and is also called directly before an engine is built in-process.
"""
from __future__ import annotations

LORA_ARCH = "PolyAudioQwen2AudioLoRAForConditionalGeneration"


def register() -> None:
    """Register :data:`LORA_ARCH` with vLLM's ModelRegistry (lazily: the class is imported by the engine)."""
    from vllm import ModelRegistry

    if LORA_ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(LORA_ARCH, "actors.vllm_lora_model:Qwen2AudioLoRAForConditionalGeneration")
