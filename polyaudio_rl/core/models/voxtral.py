"""The ``voxtral`` family: Mistral's Voxtral (Whisper encoder → 4-frame stacking adapter → Mistral/Llama decoder).

* recognised by ``model_type`` ``voxtral`` / architecture ``VoxtralForConditionalGeneration`` in ``config.json``;
* the checkpoint carries two formats (:mod:`.voxtral_format`): HF (``config.json``, ``model.safetensors``,
  ``tekken.json``) for transformers, Mistral (``params.json``, ``consolidated.safetensors``) for vLLM, whose Voxtral
  runs only with ``tokenizer_mode="mistral"`` (its processor is mistral_common's) — :meth:`VoxtralFamily.vllm_engine_kwargs`;
* processor (:class:`VoxtralAudioProcessor`): tekken tokenizer (control tokens such as ``[INST]`` in a prompt's text
  become their ids, :class:`TekkenTokenizer`) + the checkpoint's Whisper feature extractor. transformers'
  ``VoxtralProcessor`` takes audio only through its chat template with files or URLs; this one takes 16 kHz arrays
  like every other family's;
* prompt: Mistral's instruct format, what mistral_common's ``encode_chat_completion`` (and so vLLM's chat endpoint
  serving the policy) gives for a user turn of audio chunks and the question:
  ``<s>[INST][BEGIN_AUDIO][AUDIO]…[BEGIN_AUDIO][AUDIO]…question[/INST]``, clips in order, unlabelled (the order names
  them). The chat template writes one ``[AUDIO]``; the processor expands it to the clip's 375. No system prompt:
  tokenizer v7 rejects a system message beside audio (``data.system_prompt`` is left out for this family);
* audio tokens: every clip is zero-padded to a 30 s window (log-mel 128 × 3000 frames → 1500 encoder positions →
  4 stacked per token): 375 tokens for any clip of up to 30 s (12.5 a second only at exactly 30 s);
* plain audio encoder, not the length-aware one: the encoder only accepts full 3000-frame windows (transformers
  raises on any other length) and adds all 1500 learned-position slots; Voxtral was trained on zero-padded 30 s
  windows and vLLM's Voxtral pads every clip to that window too, so running a clip on its own length would change
  the audio embeddings and make the learner disagree with the rollouts;
* LoRA on the decoder's attention and MLP projections only (``language_model.layers.N.(self_attn|mlp).*``); the
  Whisper encoder (``q/k/v_proj``, ``fc1/fc2``) and the adapter stay frozen;
* weight sync: vLLM's Voxtral ``load_weights`` takes checkpoint (Mistral) names, so merged pushes are renamed (and
  ``wq``/``wk`` re-permuted) by :meth:`VoxtralFamily.vllm_weights`; vLLM's Voxtral supports LoRA itself (its module
  names ``language_model.model.layers.N.self_attn.q_proj`` are the hub names a PEFT adapter carries).

Tiny checkpoint: ``python -m polyaudio_rl.tiny --family voxtral --out DIR`` (:func:`write_tiny`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .base import ModelFamily, ModelParts, scale_audio_convs
from .voxtral_format import (AUDIO_ID, BEGIN_AUDIO_ID, CHUNK_SECONDS, SAMPLING_RATE, TOKENS_PER_CLIP, tekken_dict,
                             to_mistral_weights, train_merges, write_mistral_files)

LM_HEAD_STD = 0.1
TEXT_SIZES = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, "num_attention_heads": 2,
              "num_key_value_heads": 1}
# Whisper encoder of the tiny model: head_dim 64 (vLLM's CPU attention rejects smaller); the encoder FFN width is
# also the adapter's input (4 stacked frames × d_model), so it must be 4 × d_model.
AUDIO_SIZES = {"d_model": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 512,
               "num_mel_bins": 128, "max_source_positions": 1500}
WINDOW_SAMPLES = int(CHUNK_SECONDS * SAMPLING_RATE)
AUDIO, BEGIN_AUDIO, BOS, EOS, INST, END_INST = "[AUDIO]", "[BEGIN_AUDIO]", "<s>", "</s>", "[INST]", "[/INST]"


def audio_token_count(num_samples: int) -> int:
    """Language-model positions of a 16 kHz clip: 375 per started 30 s window (at least one window)."""
    return TOKENS_PER_CLIP * max(1, math.ceil(num_samples / WINDOW_SAMPLES))


# ------------------------------------------------------------------------------------------------ tokenizer
class TekkenTokenizer:
    """transformers' ``MistralCommonBackend`` (tekken) with control tokens in text: ``tok("<s>[INST]hi[/INST]")``
    gives ``[1, 3, …, 4]`` — the backend would spell ``[INST]`` out as bytes. Plain text between control tokens is
    encoded piece by piece, as mistral_common encodes each chunk of a message. Everything else is the backend's."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.padding_side = "right"
        tekken = backend.tokenizer.instruct_tokenizer.tokenizer
        self._tekken = tekken
        specials = [t["token_str"] for t in tekken._all_special_tokens]
        self._special_ids = {s: tekken.get_special_token(s) for s in specials}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")

    @classmethod
    def from_pretrained(cls, path: str) -> "TekkenTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path))

    def __getattr__(self, name: str) -> Any:
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __len__(self) -> int:
        return len(self.backend)

    def encode(self, text: str, add_special_tokens: bool = False, **_: Any) -> list[int]:
        ids = [self._tekken.bos_id] if add_special_tokens else []
        for piece in self._split.split(text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(self._tekken.encode(piece, bos=False, eos=False))
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = False, padding: bool | str = False,
                 return_tensors: str | None = None, **_: Any) -> Any:
        from transformers import BatchEncoding

        single = isinstance(text, str)
        rows = [self.encode(t, add_special_tokens) for t in ([text] if single else text)]
        masks = [[1] * len(r) for r in rows]
        if padding and rows:
            width, pad = max(map(len, rows)), self.backend.pad_token_id
            left = self.padding_side == "left"
            rows = [([pad] * (width - len(r)) + r) if left else (r + [pad] * (width - len(r))) for r in rows]
            masks = [([0] * (width - len(m)) + m) if left else (m + [0] * (width - len(m))) for m in masks]
        data = {"input_ids": rows[0] if single else rows, "attention_mask": masks[0] if single else masks}
        return BatchEncoding(data, tensor_type=return_tensors)

    def save_pretrained(self, path: str | Path, **kw: Any) -> Any:
        return self.backend.save_pretrained(str(path), **kw)


# ------------------------------------------------------------------------------------------------ processor
def render_chat(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Mistral's instruct format for ``messages`` (user / assistant; content a string or parts of type ``audio``
    and ``text``): ``<s>[INST]`` + ``[BEGIN_AUDIO][AUDIO]`` per audio part + text + ``[/INST]`` — what
    mistral_common (and so vLLM's chat endpoint serving the policy) renders for the same parts. System messages are
    left out: tokenizer v7 rejects a system message beside audio, so the served policy never sees one either."""
    out = [BOS]
    for msg in messages:
        role, content = msg["role"], msg["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if role == "system":
            continue
        if role == "assistant":
            out.append("".join(p.get("text", "") for p in parts) + EOS)
            continue
        body = "".join(f"{BEGIN_AUDIO}{AUDIO}" if p.get("type") == "audio" or "audio" in p or "audio_url" in p
                       else p.get("text", "") for p in parts)
        out.append(INST + body + END_INST)
    # Mistral's format has no assistant header: after a user turn the generation prompt is its [/INST]
    return "".join(out)


class VoxtralAudioProcessor:
    """Voxtral's processor for text and 16 kHz audio arrays: tekken tokenizer + Whisper feature extractor, each
    ``[AUDIO]`` expanded to the clip's 375 tokens, each clip zero-padded to the 30 s window (``input_features``: one
    (128, 3000) row per clip, clips in order)."""

    def __init__(self, feature_extractor: Any, tokenizer: TekkenTokenizer):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_token, self.audio_token_id = AUDIO, AUDIO_ID
        self.end_of_turn = EOS  # what ends an assistant turn (SFT targets end with it)
        self.chat_template = None

    @classmethod
    def from_pretrained(cls, path: str) -> "VoxtralAudioProcessor":
        from transformers import WhisperFeatureExtractor

        return cls(WhisperFeatureExtractor.from_pretrained(path), TekkenTokenizer.from_pretrained(path))

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **_: Any) -> Any:
        text = render_chat(messages, add_generation_prompt)
        return self.tokenizer.encode(text) if tokenize else text

    def features(self, audio: Sequence[Any], sampling_rate: int = SAMPLING_RATE) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_features`` (clips, 128, 3000) and ``feature_attention_mask`` (clips, 3000: 1 on frames of real
        audio) of clips zero-padded to the 30 s window. A longer clip is an error: Voxtral would split it into
        several windows (750+ tokens), one clip would no longer be one feature row."""
        import numpy as np

        feats, masks = [], []
        for i, a in enumerate(audio):
            a = np.asarray(a, dtype=np.float32).reshape(-1)
            if len(a) > WINDOW_SAMPLES:
                raise ValueError(f"clip {i + 1} is {len(a) / SAMPLING_RATE:.2f} s; Voxtral's prompts take clips of at "
                                 f"most {CHUNK_SECONDS:g} s (one encoder window each)")
            padded = np.pad(a, (0, WINDOW_SAMPLES - len(a)))
            feats.append(self.feature_extractor(padded, sampling_rate=sampling_rate,
                                                return_tensors="pt")["input_features"][0])
            real = torch.zeros(feats[-1].shape[-1], dtype=torch.long)
            real[: math.ceil(len(a) / self.feature_extractor.hop_length)] = 1
            masks.append(real)
        return torch.stack(feats), torch.stack(masks)

    def __call__(self, text: list[str] | str, audio: list[Any] | None = None, sampling_rate: int = SAMPLING_RATE,
                 return_tensors: str | None = None, padding: bool | str = False, **_: Any) -> Any:
        from transformers import BatchFeature

        if sampling_rate != SAMPLING_RATE:
            raise ValueError(f"Voxtral's processor takes {SAMPLING_RATE} Hz audio, got sampling_rate={sampling_rate}")
        texts = [text] if isinstance(text, str) else list(text)
        data: dict[str, Any] = {}
        if audio is not None and len(audio):
            data["input_features"], data["feature_attention_mask"] = self.features(audio, sampling_rate)
            counts = iter([audio_token_count(len(a)) for a in audio])
            texts = [re.sub(re.escape(AUDIO), lambda _m: AUDIO * next(counts), t) for t in texts]
        enc = self.tokenizer(texts, padding=padding, add_special_tokens=False)
        return BatchFeature(data={**enc, **data}, tensor_type=return_tensors)


# ------------------------------------------------------------------------------------------------ tiny checkpoint
def build_config(vocab_size: int, **sizes: int) -> Any:
    """The tiny ``VoxtralConfig``; ``sizes`` overrides :data:`TEXT_SIZES` (head_dim stays 64)."""
    from transformers import VoxtralConfig

    unknown = set(sizes) - set(TEXT_SIZES)
    if unknown:
        raise ValueError(f"unknown text sizes {sorted(unknown)}; known: {sorted(TEXT_SIZES)}")
    text = dict(model_type="llama", vocab_size=vocab_size, head_dim=64, max_position_embeddings=8192,
                rope_theta=1e8, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                pad_token_id=11, **{**TEXT_SIZES, **sizes})
    cfg = VoxtralConfig(audio_config=dict(model_type="voxtral_encoder", **AUDIO_SIZES), text_config=text,
                        audio_token_id=AUDIO_ID, projector_hidden_act="gelu")
    cfg.dtype = "float32"
    cfg.architectures = ["VoxtralForConditionalGeneration"]
    return cfg


def _random_model(config: Any, seed: int) -> Any:
    from transformers import VoxtralForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import sinusoids

    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration(config).eval()
    with torch.no_grad():
        # lm_head std 0.1 (not 0.02): after the final RMSNorm |h| ≈ sqrt(hidden); with 0.02 no logit could exceed
        # ~2.6 and the tiny model could never concentrate probability, however it is fine-tuned.
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        pos = model.model.audio_tower.embed_positions.weight
        pos.copy_(sinusoids(*pos.shape))  # vLLM computes these sinusoids itself and ignores stored ones
        scale_audio_convs(model.model.audio_tower)  # else the sinusoids drown the clip's features: a deaf model
    return model


def write_tiny(out: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write a tiny random Voxtral to ``out`` atomically: HF files (``config.json``, ``model.safetensors``,
    ``tekken.json``, ``preprocessor_config.json``, ``generation_config.json``) and Mistral files (``params.json``,
    ``consolidated.safetensors``). Same seed ⇒ same tensors."""
    import json

    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperFeatureExtractor

    from ..atomic import atomic_dir
    from .qwen2_audio import _corpus

    out = Path(out)
    with atomic_dir(out) as tmp:
        tekken = tekken_dict(train_merges(_corpus(seed), 1024))
        (tmp / "tekken.json").write_text(json.dumps(tekken, ensure_ascii=False))
        config = build_config(tekken["config"]["default_vocab_size"], **sizes)
        model = _random_model(config, seed)
        state = {hub_key(k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_mistral_files(tmp, config, state)
        config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=11, do_sample=False).save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLING_RATE, chunk_length=30,
                                return_attention_mask=False).save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"Tiny random-initialised Voxtral (seed {seed}) written by `python -m polyaudio_rl.tiny --family voxtral`."
            f" Not a trained model: for tests only. {TOKENS_PER_CLIP} audio tokens per clip of up to 30 s.\n")
    return out


def hub_key(name: str) -> str:
    """transformers 5.x names (``model.language_model.*``, ``model.audio_tower.*``, ``lm_head.*``) → Voxtral's HF
    hub names (``language_model.model.*``, ``audio_tower.*``, ``language_model.lm_head.*``)."""
    name = name.removeprefix("model.")
    if name.startswith("language_model.") and not name.startswith(("language_model.model.", "language_model.lm_head.")):
        return "language_model.model." + name[len("language_model."):]
    if name.startswith("lm_head."):
        return "language_model." + name
    return name


# ------------------------------------------------------------------------------------------------ the family
class VoxtralFamily(ModelFamily):
    """Mistral's Voxtral (Mini 3B, Small 24B): Whisper-large encoder, Mistral decoder, text out."""

    name = "voxtral"
    model_types = ("voxtral",)
    architectures = ("VoxtralForConditionalGeneration",)
    hf_class = "VoxtralForConditionalGeneration"
    vllm_architecture = "VoxtralForConditionalGeneration"
    audio_placeholder = AUDIO
    audio_special_tokens = (AUDIO, BEGIN_AUDIO, "[TRANSCRIBE]")
    audio_tokens_per_second = TOKENS_PER_CLIP / CHUNK_SECONDS
    max_clips = 5  # vLLM's Voxtral declares at most 5 audios per prompt
    max_clip_seconds = CHUNK_SECONDS
    length_aware_encoder = ("no: the encoder takes only whole zero-padded 30 s windows (3000 mel frames, all 1500 "
                            "positions), as Voxtral was trained and as vLLM's Voxtral runs it; a clip on its own "
                            "length would change its audio embeddings and the learner would disagree with rollouts")
    lora_target_modules = (r"^(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn|mlp)\."
                           r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")
    tiny_sizes = TEXT_SIZES

    def load_processor(self, path: str) -> Any:
        return VoxtralAudioProcessor.from_pretrained(path)

    def load_model(self, path: str, dtype: torch.dtype) -> Any:
        from transformers import VoxtralForConditionalGeneration

        return VoxtralForConditionalGeneration.from_pretrained(path, dtype=dtype)

    def parts(self, model: Any) -> ModelParts:
        inner = getattr(model, "model", None)
        if not (hasattr(inner, "audio_tower") and hasattr(inner, "language_model")):
            raise TypeError(f"expected a VoxtralForConditionalGeneration, got {type(model).__name__}")
        return ModelParts(inner.language_model, (inner.audio_tower, inner.multi_modal_projector),
                          model.get_input_embeddings())

    def audio_token_count(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    def hub_key(self, name: str) -> str:
        return hub_key(name)

    def vllm_engine_kwargs(self) -> dict[str, Any]:
        """vLLM's Voxtral needs mistral_common's tokenizer, and with it the Mistral config and weights."""
        return {"tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral"}

    def vllm_prompt_ids(self, prompt: Any, tokenizer: Any) -> list[int]:
        """Expanded ids (375 ``[AUDIO]`` per clip): vLLM's Voxtral takes a prompt whose audio spans are written
        already, as mistral_common writes them, and only checks them."""
        counts = iter([audio_token_count(len(a)) for a in prompt.audios])
        return tokenizer.encode(re.sub(re.escape(AUDIO), lambda _m: AUDIO * next(counts), prompt.text))

    def vllm_input(self, prompt: Any, tokenizer: Any) -> dict[str, Any]:
        """A token prompt: in ``tokenizer_mode="mistral"`` vLLM would spell a text prompt's ``[INST]`` out as bytes."""
        return {"prompt_token_ids": self.vllm_prompt_ids(prompt, tokenizer),
                "multi_modal_data": {"audio": [(a, SAMPLING_RATE) for a in prompt.audios]}}

    def vllm_weights(self, weights: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
        """Hub-named tensors → the Mistral names (and rotary layout) vLLM's Voxtral ``load_weights`` takes."""
        from .base import read_config

        text = read_config(path)["text_config"]
        n_heads = text.get("num_attention_heads", 32)
        return to_mistral_weights(weights, n_heads, text.get("num_key_value_heads", n_heads))

    def write_serving_files(self, out: Path, config: Any, hub_state: dict[str, torch.Tensor]) -> None:
        """``params.json`` + ``consolidated.safetensors``: vLLM's Voxtral reads only the Mistral format."""
        write_mistral_files(Path(out), config, hub_state)

    def write_tiny(self, out: Path, seed: int = 0, **sizes: int) -> Path:
        return write_tiny(out, seed, **sizes)


__all__ = ["TekkenTokenizer", "VoxtralAudioProcessor", "VoxtralFamily", "audio_token_count", "render_chat",
           "write_tiny"]
