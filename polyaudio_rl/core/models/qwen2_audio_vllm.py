"""The ``qwen2_audio`` family's vLLM classes (registered by :mod:`.vllm_plugin`; imported only inside vLLM processes).

Both are vLLM's own ``Qwen2AudioForConditionalGeneration`` with the audio encoder run on each clip's own length
(:mod:`.whisper_encoder`, as the learner runs it): ``PolyAudioQwen2Audio`` for merged sync and the served policy,
``PolyAudioQwen2AudioLoRA`` also declaring the LoRA interface (vLLM 0.32's class does not implement ``SupportsLoRA``,
so it cannot serve a PEFT adapter): the packed modules (qkv_proj = q/k/v, gate_up_proj = gate/up) and which prefix
is the language model (adapters apply there; the audio tower and projector stay frozen, as in training).
"""
from __future__ import annotations

from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.qwen2_audio import (
    Qwen2AudioDummyInputsBuilder, Qwen2AudioForConditionalGeneration, Qwen2AudioMultiModalProcessor,
    Qwen2AudioProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .whisper_encoder import clip_outputs, use_length_aware_encoder, use_length_aware_features


class PolyAudioProcessingInfo(Qwen2AudioProcessingInfo):
    """vLLM's input processing for Qwen2-Audio with the mel features computed on each clip's own length."""

    def get_hf_processor(self, **kwargs: object):
        processor = super().get_hf_processor(**kwargs)
        use_length_aware_features(processor.feature_extractor)
        return processor


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2AudioMultiModalProcessor, info=PolyAudioProcessingInfo, dummy_inputs=Qwen2AudioDummyInputsBuilder,
)
class PolyAudioQwen2Audio(Qwen2AudioForConditionalGeneration):
    """vLLM's Qwen2-Audio with the mel features and the audio encoder computed on each clip's own length (weights
    and their names unchanged)."""

    def __init__(self, *, vllm_config, prefix: str = ""):  # keyword-only: vLLM inspects the signature
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        use_length_aware_encoder(self.audio_tower)

    def _process_audio_input(self, audio_input):
        """Each clip's audio embeddings straight from its length (vLLM's own builds a [clips, 1, 1500, 1500]
        attention mask first, which on CPU cost as much as the encoder it masks)."""
        if audio_input["type"] != "audio_features":
            return super()._process_audio_input(audio_input)
        frames = audio_input["feature_attention_mask"].sum(-1)
        lengths, out_lengths = self.audio_tower._get_feat_extract_output_lengths(frames)
        outs = clip_outputs(self.audio_tower, audio_input["input_features"], lengths.tolist())
        return tuple(self.multi_modal_projector(o[:k]) for o, k in zip(outs, out_lengths.tolist()))


class PolyAudioQwen2AudioLoRA(PolyAudioQwen2Audio, SupportsLoRA):
    """:class:`PolyAudioQwen2Audio` + the LoRA interface on its Qwen2 language model."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(
            language_model="language_model.", connector="multi_modal_projector.", tower_model="audio_tower."
        )
