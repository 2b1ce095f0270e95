"""The model-family interface: everything the system needs to know about one lineage of audio LLMs.

A family is one module under :mod:`polyaudio_rl.core.models` holding one :class:`ModelFamily` subclass. Every other
part of the system (prompt builder, rollout engines, learner with packing and prompt cache, weight syncs, SFT, the
served policy, the benches) asks the family of a checkpoint — :func:`polyaudio_rl.core.models.family_of` — and never
names a model. Adding a family is one module plus its tests, and one line in the registry.
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch


class FamilyError(ValueError):
    """A checkpoint no registered family recognises, or a family asked for something it does not support."""


@dataclass
class ModelParts:
    """The modules of a loaded model the learner works on (its PEFT / DeepSpeed wrappers peeled off).

    ``language_model`` is the decoder that receives the merged text+audio ``inputs_embeds`` (pre-hooks on it capture
    or patch them); ``audio_modules`` are the audio encoder and projector (frozen by default, kept in eval mode);
    ``embed_tokens`` is the text embedding table."""

    language_model: torch.nn.Module
    audio_modules: tuple[torch.nn.Module, ...]
    embed_tokens: torch.nn.Module

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed_tokens

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Every parameter of these modules, once."""
        seen: set[int] = set()
        for m in (self.language_model, *self.audio_modules, self.embed_tokens):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    @property
    def audio_tower(self) -> torch.nn.Module:
        return self.audio_modules[0]


class ModelFamily(abc.ABC):
    """One lineage of audio LLMs (class attributes say what it is; methods load, prompt and write it)."""

    name: ClassVar[str]
    """Registry name, e.g. ``qwen2_audio`` (what ``python -m polyaudio_rl.tiny --family`` takes)."""
    model_types: ClassVar[tuple[str, ...]]
    """``config.json`` ``model_type`` values of this family's checkpoints."""
    architectures: ClassVar[tuple[str, ...]]
    """``config.json`` ``architectures`` values of this family's checkpoints."""
    hf_class: ClassVar[str]
    """The transformers class that loads the checkpoint (text out)."""
    vllm_architecture: ClassVar[str]
    """vLLM's own architecture name for the checkpoint (the class PolyAudio's registered ones derive from)."""
    audio_placeholder: ClassVar[str]
    """The token the chat template writes once per clip; the processor expands it to the clip's audio tokens."""
    audio_special_tokens: ClassVar[tuple[str, ...]]
    """Multimodal placeholder tokens sampling must never produce (a completion is the learner's input too, where such
    a token would look like an audio slot)."""
    audio_tokens_per_second: ClassVar[float]
    """Language-model positions per second of 16 kHz audio (for ``max_model_len`` checks and config arithmetic)."""
    max_clips: ClassVar[int]
    """Most clips one prompt may carry."""
    max_clip_seconds: ClassVar[float]
    """Longest clip the audio front end takes without truncating it."""
    length_aware_encoder: ClassVar[str]
    """``"yes"`` when the audio encoder runs on each clip's own length, else why the plain encoder runs."""
    lora_target_modules: ClassVar[str]
    """PEFT ``target_modules`` regex hitting the language model's linear layers only (audio tower untouched)."""
    tiny_sizes: ClassVar[dict[str, int]]
    """Language-model sizes of the tiny random checkpoint (overridable by ``write_tiny(**sizes)``)."""

    # ------------------------------------------------------------------------------------------- recognition
    def recognises(self, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's ``config.json`` (as a dict) belongs to this family."""
        archs = set(config.get("architectures") or ())
        return config.get("model_type") in self.model_types or bool(archs & set(self.architectures))

    # ------------------------------------------------------------------------------------------- loading
    def prepare_process(self) -> None:
        """Per-process set-up before this family's checkpoints are read in this process: the vLLM plugin calls it in
        every vLLM process (engine, workers, Serve replicas), the family's own loads call it too. Idempotent; none
        by default."""

    @abc.abstractmethod
    def load_processor(self, path: str) -> Any:
        """The processor: ``.tokenizer``, ``.feature_extractor``, ``apply_chat_template`` and
        ``__call__(text=[...], audio=[...], sampling_rate=16000, return_tensors="pt", padding=True)`` giving
        ``input_ids`` (placeholders expanded), ``attention_mask``, ``input_features``, ``feature_attention_mask``."""

    @abc.abstractmethod
    def load_model(self, path: str, dtype: torch.dtype) -> Any:
        """The transformers model (text out) from ``path``; forward takes the processor's outputs."""

    @abc.abstractmethod
    def parts(self, model: Any) -> ModelParts:
        """The language model, audio modules and text embeddings of a bare transformers model of this family."""

    # ------------------------------------------------------------------------------------------- tokens
    @abc.abstractmethod
    def audio_token_count(self, num_samples: int) -> int:
        """Language-model positions one 16 kHz clip of ``num_samples`` samples becomes."""

    def special_ids(self, tokenizer: Any) -> list[int]:
        """Ids of :attr:`audio_special_tokens` this tokenizer has, sorted."""
        return special_token_ids(tokenizer, self.audio_special_tokens)

    # ------------------------------------------------------------------------------------------- weights
    def hub_key(self, name: str) -> str:
        """A transformers module/parameter name of this family's model → its name in the checkpoint files (what the
        vLLM class loads and what weight pushes carry)."""
        return name

    # ------------------------------------------------------------------------------------------- vLLM
    vllm_classes: ClassVar[dict[str, str]] = {}
    """PolyAudio's vLLM classes to register: architecture name → ``"module:Class"``."""
    vllm_arch: ClassVar[str] = ""
    """The registered architecture rollout engines and the served policy run (merged sync)."""
    vllm_lora_arch: ClassVar[str] = ""
    """The registered LoRA-capable architecture (``rollout.sync_mode=adapter``)."""

    def vllm_hf_overrides(self, lora: bool = False) -> dict[str, Any]:
        """The ``hf_overrides`` engine argument that selects PolyAudio's class (the checkpoint keeps its names)."""
        arch = self.vllm_lora_arch if lora else self.vllm_arch
        return {"architectures": [arch]} if arch else {}

    def vllm_engine_kwargs(self) -> dict[str, Any]:
        """Further vLLM engine arguments this family's checkpoints need (rollout engines and the served policy)."""
        return {}

    def vllm_token_block(self, path: str, tokenizer: Any) -> Any:
        """How a vLLM engine of this family serving ``path`` blocks the audio special tokens (every family's,
        :func:`polyaudio_rl.core.models.audio_special_ids` of the checkpoint's ``tokenizer``): a
        :class:`~polyaudio_rl.core.models.token_block.TokenBlock` whose ``bad_words`` / ``allowed_token_ids`` a
        request carries, worked out with vLLM's own tokenizer and vocabulary size for this family's engine
        arguments (the served policy; the rollout engines ask their live engine the same way)."""
        from . import audio_special_ids
        from .token_block import checkpoint_block

        return checkpoint_block(path, audio_special_ids(tokenizer),
                                {"hf_overrides": self.vllm_hf_overrides(), **self.vllm_engine_kwargs()})

    def vllm_prompt_ids(self, prompt: Any, tokenizer: Any) -> list[int]:
        """``prompt``'s token ids as vLLM takes them in a token prompt: one placeholder per clip, which vLLM's
        processor expands."""
        return list(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])

    def vllm_input(self, prompt: Any, tokenizer: Any) -> dict[str, Any]:
        """vLLM's prompt dict for a :class:`~polyaudio_rl.core.prompts.MultiAudioPrompt` (clips in order, 16 kHz)."""
        return {"prompt": prompt.text, "multi_modal_data": {"audio": [(a, 16000) for a in prompt.audios]}}

    def vllm_weights(self, weights: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
        """Hub-named tensors of a merged push → the names this family's vLLM class loads (the same by default)."""
        return weights

    def write_serving_files(self, out: Path, config: Any, hub_state: dict[str, torch.Tensor]) -> None:
        """Write the files beside the HF ones that this family's vLLM class reads, for a checkpoint written here
        (a merged adapter: ``eval.merge``); none by default."""

    # ------------------------------------------------------------------------------------------- tiny
    @abc.abstractmethod
    def write_tiny(self, out: Path, seed: int = 0, **sizes: int) -> Path:
        """Write a tiny random checkpoint of this family to ``out`` offline (tokenizer and processor built here);
        loadable by transformers and by vLLM. Same seed ⇒ same files."""

    def describe(self) -> dict[str, Any]:
        """The row of the supported-families table."""
        return {"family": self.name, "transformers": self.hf_class, "vllm": self.vllm_architecture,
                "audio_tokens_per_s": self.audio_tokens_per_second, "max_clips": self.max_clips,
                "length_aware_encoder": self.length_aware_encoder}


AUDIO_CONV_STD = 0.08
"""Init std of a tiny checkpoint's Whisper-type audio convolutions where sinusoid positions follow them (transformers'
default is 0.02)."""


def scale_audio_convs(tower: torch.nn.Module, std: float = AUDIO_CONV_STD) -> None:
    """Re-draw a tiny random Whisper-type encoder's two convolutions at ``std`` so that the mel features reach it.

    Qwen2.5-Omni's and Voxtral's encoders add fixed sinusoid positions (RMS 0.71) to the convolutions' output; at
    transformers' default std 0.02 that output has RMS ~0.02, so a clip's content is a few per cent of the encoder's
    input and the random model is all but deaf (the demo's held-out accuracy with silent clips equals the one with
    audio). At 0.08 the convolutions' RMS is ~0.4-0.7, the order of the positions' — the balance the tiny Qwen2-Audio
    has (its learned positions and its convolutions are both at RMS ~0.02), and a trained Whisper encoder's O(1)
    features. A family may pass its own ``std``: the RMS balance does not make each audio position as informative
    as the tiny Qwen2-Audio's (:data:`.qwen2_5_omni.TINY_AUDIO_CONV_STD`). Call under ``torch.no_grad()`` after the
    seeded model is built."""
    for conv in (tower.conv1, tower.conv2):
        conv.weight.normal_(0.0, std)


def special_token_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Ids of those of ``tokens`` that ``tokenizer`` has as single tokens, sorted."""
    ids = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in tokens:
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i >= 0 and i != unk:
            ids.add(i)
    return sorted(ids)


def read_config(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``config.json`` as a dict (a :class:`FamilyError` naming the path when absent or unreadable)."""
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError as exc:
        raise FamilyError(f"{path}: no config.json (not a checkpoint directory)") from exc
    except (OSError, ValueError) as exc:
        raise FamilyError(f"{f}: cannot read it as JSON: {exc}") from exc
