"""The ``qwen2_5_omni`` family's vLLM classes: Qwen2.5-Omni's thinker for text and audio (registered by
:mod:`.vllm_plugin`; imported only inside vLLM processes).

vLLM's own ``Qwen2_5OmniForConditionalGeneration`` module imports torchvision at import time (through Qwen2-VL's
image processor), and the CPU torch we pin has no torchvision that loads. This class takes vLLM's Qwen2-Audio
machinery (the audio input processing: one ``<|AUDIO|>`` run per clip, the clips' mel features and masks) and puts
the thinker's parts in: transformers' ``Qwen2_5OmniAudioEncoder`` (as vLLM's own thinker does) and vLLM's Qwen2
decoder with the checkpoint's multimodal rotary embedding. A text-and-audio prompt has the same position on all three
rotary axes (:mod:`.qwen2_5_omni`), so :meth:`get_mrope_input_positions` is ``0 .. n-1`` on each. Weights load from
the full checkpoint's ``thinker.*`` names; the vision tower, talker and token2wav are skipped.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from vllm.model_executor.models.interfaces import SupportsLoRA, SupportsMRoPE
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.qwen2_audio import (
    Qwen2AudioDummyInputsBuilder, Qwen2AudioForConditionalGeneration, Qwen2AudioMultiModalProcessor,
    Qwen2AudioProcessingInfo,
)
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY

from .qwen2_5_omni import load_audio_processor


def thinker_config(hf_config):
    """The thinker's config of a full checkpoint's config (or the config itself for a thinker-only one)."""
    return getattr(hf_config, "thinker_config", hf_config)


@functools.lru_cache(maxsize=8)
def _processor(path: str):
    return load_audio_processor(path)


class OmniAudioProcessingInfo(Qwen2AudioProcessingInfo):
    """vLLM's Qwen2-Audio input processing on the thinker's config and PolyAudio's audio-only processor."""

    def get_hf_config(self):
        return thinker_config(self.ctx.model_config.hf_config)

    def get_hf_processor(self, **kwargs: object):
        return _processor(self.ctx.model_config.model)


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2AudioMultiModalProcessor, info=OmniAudioProcessingInfo, dummy_inputs=Qwen2AudioDummyInputsBuilder,
)
class PolyAudioQwen25OmniThinker(Qwen2AudioForConditionalGeneration, SupportsMRoPE):
    """Qwen2.5-Omni's thinker, text and audio in, text out."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "thinker.lm_head.": "language_model.lm_head.", "thinker.model.": "language_model.model.",
        "thinker.visual.": None, "thinker.": "", "talker.": None, "token2wav.": None,
    })

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return f"Audio {i}: <|audio_bos|><|AUDIO|><|audio_eos|>"
        raise ValueError("Only audio modality is supported")

    def __init__(self, *, vllm_config, prefix: str = ""):  # keyword-only: vLLM inspects the signature
        nn.Module.__init__(self)
        config = thinker_config(vllm_config.model_config.hf_config)
        self.config = config
        self.multimodal_config = vllm_config.model_config.multimodal_config
        self.quant_config = vllm_config.quant_config
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_tower = Qwen2_5OmniAudioEncoder(config.audio_config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _process_audio_input(self, audio_input):
        """Each clip's audio embeddings: its real mel frames, packed clip after clip, through the encoder (which
        windows each clip on its own length), split back per clip — as transformers' thinker does."""
        if audio_input["type"] == "audio_embeds":
            return tuple(audio_input["audio_embeds"])
        feats, mask = audio_input["input_features"], audio_input["feature_attention_mask"]
        lengths = mask.sum(-1)
        after_cnn, out_lengths = self.audio_tower._get_feat_extract_output_lengths(lengths)
        packed = feats.permute(0, 2, 1)[mask.bool()].permute(1, 0)
        out = self.audio_tower(packed.to(self.audio_tower.conv1.weight.dtype), feature_lens=lengths,
                               aftercnn_lens=after_cnn)
        return out.last_hidden_state.split(out_lengths.tolist())

    def get_mrope_input_positions(self, input_tokens, mm_features) -> tuple[torch.Tensor, int]:
        """Text and audio tokens: position i on every rotary axis (the thinker's rule without images or video)."""
        n = len(input_tokens)
        return torch.arange(n).unsqueeze(0).expand(3, -1).clone(), 0

    def load_weights(self, weights):
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


class PolyAudioQwen25OmniThinkerLoRA(PolyAudioQwen25OmniThinker, SupportsLoRA):
    """:class:`PolyAudioQwen25OmniThinker` + the LoRA interface on its Qwen2 decoder."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(language_model="language_model.", tower_model="audio_tower.")
