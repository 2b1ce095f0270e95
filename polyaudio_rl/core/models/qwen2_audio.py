"""The ``qwen2_audio`` family: Qwen2-Audio(-7B-Instruct), everything about it in one place.

* recognised by ``model_type`` ``qwen2_audio`` / ``Qwen2AudioForConditionalGeneration``;
* processor: ``Qwen2AudioProcessor`` (tokenizer + 128-mel Whisper features + chat template), the mel features
  computed on each clip's own length (:mod:`.whisper_encoder`);
* prompt: the chat template renders, per clip, ``Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>``; the processor
  expands each ``<|AUDIO|>`` to the clip's audio tokens (~25 a second: mel hop 160, conv stride 2, avg-pool 2);
* transformers ``Qwen2AudioForConditionalGeneration`` with the audio encoder run on each clip's own length; vLLM
  ``Qwen2AudioForConditionalGeneration`` subclassed in :mod:`.qwen2_audio_vllm` (same length-aware encoder; a
  LoRA-capable variant for adapter syncs);
* LoRA on the Qwen2 language model's attention and MLP projections only;
* hub weight names ``language_model.model.*`` / ``language_model.lm_head.*`` (transformers 5 names them
  ``model.language_model.*`` / ``lm_head.*``);
* the tiny random checkpoint (:meth:`Qwen2AudioFamily.write_tiny`), fully offline: ``config.json``
  (Qwen2AudioConfig), ``model.safetensors`` with hub key names, a byte-level BPE tokenizer trained here with Qwen's
  special tokens, Qwen2-Audio-Instruct's chat template and a 128-mel Whisper feature extractor. Same seed ⇒ same
  tensors and same files. Sizes (the smallest that vLLM-CPU accepts; its CPU attention needs head_dim 64): audio
  d_model 64, 2 layers, 2 heads; text hidden 128, 2 heads with 1 KV head, 2 layers, intermediate 256.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_dir
from .base import ModelFamily, ModelParts
from .whisper_encoder import use_length_aware_encoder, use_length_aware_features

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]

# Qwen2-Audio-7B-Instruct's chat template: each audio part becomes "Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>\n".
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != "
    "'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}"
    "\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LM_HEAD_STD = 0.1

_WORDS = (
    "the a an of to in and or is are was were be been it this that these those which who what when where why how "
    "audio clip clips first second third fourth fifth last one two three four five six seven eight nine ten zero "
    "yes no not enough information answer question speaker speakers voice male female same different sound sounds "
    "event events dog bark barks car horn door bell knock knocks music song tempo key major minor piano guitar drum "
    "drums violin flute trumpet bass speech said says mentions word keyword common order chronological earlier later "
    "before after between start end second seconds time count many how times occurs occur odd out belong rest "
    "entailment supported contradicted claim statement true false consistent inconsistent age name city number "
    "caption summary describe difference compare louder quieter faster slower higher lower happy sad calm loud quiet "
    "please arrange which does do did has have had with without across all both each every none only also than then "
    "audio1 audio2 audio3 audio4 audio5 option A B C D E correct because therefore so"
).split()


def _corpus(seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    lines = [" ".join(_WORDS)]
    for _ in range(2000):
        n = rng.randint(3, 14)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        end = rng.choice([".", "?", "!", ",", ":", ""])
        num = str(rng.randint(0, 1000)) if rng.random() < 0.3 else ""
        lines.append(" ".join(words) + (" " + num if num else "") + end)
    lines.append("0123456789 ()[]{}<>-_=+*/\\|'\"`~@#$%^&;:,.?!")
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 1024):
    """A byte-level BPE trained offline on a fixed synthetic corpus, wrapped as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


TEXT_SIZES = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, "num_attention_heads": 2,
              "num_key_value_heads": 1}


def build_config(vocab_size: int, audio_token_index: int, eos_id: int, pad_id: int, **sizes: int):
    """The tiny config; ``sizes`` overrides the language model's :data:`TEXT_SIZES` (head_dim stays 64), e.g.
    ``hidden_size=1024, num_hidden_layers=12, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=2``
    for a larger random model (sync and memory measurements; not for the tests)."""
    from transformers import Qwen2AudioConfig

    unknown = set(sizes) - set(TEXT_SIZES)
    if unknown:
        raise ValueError(f"unknown text sizes {sorted(unknown)}; known: {sorted(TEXT_SIZES)}")
    t = {**TEXT_SIZES, **sizes}

    audio = dict(
        model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2, encoder_attention_heads=2,
        encoder_ffn_dim=128, num_mel_bins=128, max_source_positions=1500,
    )
    text = dict(
        model_type="qwen2", vocab_size=vocab_size, hidden_size=t["hidden_size"],
        num_attention_heads=t["num_attention_heads"], num_key_value_heads=t["num_key_value_heads"], head_dim=64,
        num_hidden_layers=t["num_hidden_layers"], intermediate_size=t["intermediate_size"], max_position_embeddings=8192,
        rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=eos_id, pad_token_id=pad_id,
        bos_token_id=eos_id,
    )
    cfg = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_token_index)
    cfg.dtype = "float32"
    cfg.architectures = ["Qwen2AudioForConditionalGeneration"]
    return cfg


def write_tiny(out: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write the checkpoint to ``out`` atomically (temp dir, then rename). Returns the path. ``sizes``: see
    :func:`build_config` (default: the tiny sizes)."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

    out = Path(out)
    with atomic_dir(out) as tmp:
        tokenizer = build_tokenizer(seed)
        audio_id = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
        eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config = build_config(len(tokenizer), audio_id, eos_id, pad_id, **sizes)
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        # lm_head std 0.1 instead of 0.02: after the final RMSNorm |h| ≈ sqrt(hidden), so with 0.02 no logit can
        # exceed ~2.6 and the tiny model could never put more than ~1% on a token, however it is fine-tuned.
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        state = {hub_key(k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, do_sample=False).save_pretrained(tmp)
        fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30)
        processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"Tiny random-initialised Qwen2-Audio (seed {seed}) written by `python -m polyaudio_rl.tiny`. "
            "Not a trained model: for tests and the embedded default only.\n"
        )
    return out


# ------------------------------------------------------------------------------------------------------ hub names
def hub_key(name: str) -> str:
    """transformers 5.x module names → Qwen2-Audio hub checkpoint names (what vLLM's loader expects)."""
    if name.startswith("model."):
        name = name[len("model."):]
    if name.startswith("language_model.model.model."):
        return "language_model.model." + name[len("language_model.model.model."):]
    if name.startswith("language_model.model.lm_head."):
        return "language_model.lm_head." + name[len("language_model.model.lm_head."):]
    if name.startswith("language_model.") and not name.startswith(("language_model.model.", "language_model.lm_head.")):
        return "language_model.model." + name[len("language_model."):]
    if name.startswith("lm_head."):
        return "language_model." + name
    return name


def audio_token_count(num_samples: int) -> int:
    """Audio tokens for a 16 kHz clip: mel frames (hop 160) → conv stride 2 → avg-pool 2 (~25 per second)."""
    frames = num_samples // 160
    after_conv = (frames - 1) // 2 + 1
    return max((after_conv - 2) // 2 + 1, 0)


VLLM_ARCH = "PolyAudioQwen2AudioForConditionalGeneration"
VLLM_LORA_ARCH = "PolyAudioQwen2AudioLoRAForConditionalGeneration"


class Qwen2AudioFamily(ModelFamily):
    """Qwen2-Audio (the paper's model, Qwen2-Audio-7B-Instruct)."""

    name = "qwen2_audio"
    model_types = ("qwen2_audio",)
    architectures = ("Qwen2AudioForConditionalGeneration",)
    hf_class = "Qwen2AudioForConditionalGeneration"
    vllm_architecture = "Qwen2AudioForConditionalGeneration"
    audio_placeholder = "<|AUDIO|>"
    audio_special_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
    audio_tokens_per_second = 25.0
    max_clips = 5
    max_clip_seconds = 30.0
    length_aware_encoder = "yes"
    lora_target_modules = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    tiny_sizes = TEXT_SIZES
    vllm_arch = VLLM_ARCH
    vllm_lora_arch = VLLM_LORA_ARCH
    vllm_classes = {VLLM_ARCH: "polyaudio_rl.core.models.qwen2_audio_vllm:PolyAudioQwen2Audio",
                    VLLM_LORA_ARCH: "polyaudio_rl.core.models.qwen2_audio_vllm:PolyAudioQwen2AudioLoRA"}

    def load_processor(self, path: str) -> Any:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(path)
        use_length_aware_features(proc.feature_extractor)
        return proc

    def load_model(self, path: str, dtype: torch.dtype) -> Any:
        from transformers import Qwen2AudioForConditionalGeneration

        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype)
        use_length_aware_encoder(model.model.audio_tower)
        return model

    def parts(self, model: Any) -> ModelParts:
        core = getattr(model, "model", None)
        if core is None or not hasattr(core, "language_model") or not hasattr(core, "audio_tower"):
            raise TypeError(f"expected a Qwen2-Audio model, got {type(model).__name__}")
        return ModelParts(core.language_model, (core.audio_tower, core.multi_modal_projector),
                          core.get_input_embeddings())

    def audio_token_count(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    def hub_key(self, name: str) -> str:
        return hub_key(name)

    def write_tiny(self, out: Path, seed: int = 0, **sizes: int) -> Path:
        return write_tiny(out, seed, **sizes)
