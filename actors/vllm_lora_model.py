"""The model class behind :mod:`actors.vllm_lora` (imported only inside vLLM processes)."""
from __future__ import annotations

from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration


class Qwen2AudioLoRAForConditionalGeneration(Qwen2AudioForConditionalGeneration, SupportsLoRA):
    """vLLM's Qwen2-Audio + the LoRA interface on its Qwen2 language model."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(
            language_model="language_model.", connector="multi_modal_projector.", tower_model="audio_tower."
        )
