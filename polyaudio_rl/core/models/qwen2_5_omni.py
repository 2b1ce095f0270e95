"""The ``qwen2_5_omni`` family: the Qwen2.5-Omni thinker (3B / 7B), text out, no talker.

* recognised by ``model_type`` ``qwen2_5_omni`` (the full checkpoint: ``thinker_config`` + talker + token2wav,
  weights ``thinker.*`` / ``talker.*`` / ``token2wav.*``) or ``qwen2_5_omni_thinker`` (a thinker alone);
* processor: transformers' own ``Qwen2_5OmniProcessor`` built from the checkpoint's Whisper feature extractor and
  tokenizer alone (no image or video processor: those import torchvision, and a text-and-audio policy never uses
  them); it expands each ``<|AUDIO|>`` to the clip's audio tokens;
* prompt: the chat template renders, per clip, ``Audio i: <|audio_bos|><|AUDIO|><|audio_eos|>`` (``add_audio_id``)
  and then the question;
* audio tokens: mel frames (hop 160) → stride-2 conv → pool 2, 25 a second, as Qwen2-Audio; the encoder
  (``Qwen2_5OmniAudioEncoder``) already runs each clip on its own length, in windows of ``n_window`` frames, so the
  learner, rollouts and the served policy need no patch of it (length-aware: yes, natively);
* positions: the thinker's 3-D multimodal RoPE gives text and audio tokens the same index on all three axes (audio
  positions run on one after another), so a text-and-audio prompt has plain 1-D positions. Packing's position ids
  and vLLM's plain Qwen2 rotary embedding are therefore exact;
* transformers ``Qwen2_5OmniThinkerForConditionalGeneration`` (loads a full checkpoint's ``thinker.*`` weights
  through its ``base_model_prefix``); vLLM ``Qwen2_5OmniForConditionalGeneration`` is the official class, but its
  module imports torchvision (through Qwen2-VL's image processor) at import time, so PolyAudio registers an
  audio-only class of its own (:mod:`.qwen2_5_omni_vllm`: the same audio encoder, vLLM's Qwen2 decoder) that loads
  the same checkpoint, and a LoRA-capable variant;
* LoRA on the thinker's decoder (``model.layers.*``) only: the audio tower (``audio_tower.*``) and the vision tower
  (``visual.*``) have modules of the same names (``q_proj`` … in the vision blocks' MLP), so the regex is anchored;
* hub weight names: ``thinker.`` + the transformers name.

The tiny checkpoint (:meth:`Qwen25OmniFamily.write_tiny`) is the full-checkpoint layout with the thinker only
(``enable_audio_output`` false): audio d_model 64, 2 layers; vision depth 1, hidden 32; text hidden 128, 2 heads
with 1 KV head (head_dim 64: vLLM-CPU's attention needs it), 2 layers, intermediate 256; the audio convolutions
drawn at std :data:`TINY_AUDIO_CONV_STD` (:func:`.base.scale_audio_convs`: otherwise the random encoder cannot tell
one clip from another).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_dir
from .base import ModelFamily, ModelParts, scale_audio_convs
from .qwen2_audio import LM_HEAD_STD, _corpus
from .whisper_encoder import use_length_aware_features

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                  "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]

# Qwen2.5-Omni's chat template for text and audio parts (image and video parts render their own placeholders).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXT_SIZES = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256, "num_attention_heads": 2,
              "num_key_value_heads": 1}

TINY_AUDIO_CONV_STD = 0.12
"""Init std of the tiny encoder's two convolutions. The language model's input at a clip's audio positions, position
by position, then tells a noise clip from a tone (the demo's odd_one_out) with a Fisher ratio of 2.6 and a high tone
from a low one (entailment) with 1.2, against 1.1 and 0.4 at :data:`.base.AUDIO_CONV_STD` 0.08 (the tiny
Qwen2-Audio: 4.2 and 0.8): at 0.08 the fixed sinusoid positions, which differ from one position to the next, outweigh
what the clip holds. Larger is not better: at 0.2 the beep-or-silence cue of counting falls (0.33 against 0.49)."""

VLLM_ARCH = "PolyAudioQwen25OmniThinkerForConditionalGeneration"
VLLM_LORA_ARCH = "PolyAudioQwen25OmniThinkerLoRAForConditionalGeneration"


def audio_token_count(num_samples: int) -> int:
    """Audio tokens of a 16 kHz clip: mel frames (hop 160) → stride-2 conv → pool 2 (~25 a second); the
    processor's ``_get_feat_extract_output_lengths``."""
    frames = num_samples // 160
    after_conv = (frames - 1) // 2 + 1
    return max((after_conv - 2) // 2 + 1, 0)


def build_tokenizer(seed: int = 0, vocab_size: int = 1024):
    """A byte-level BPE trained offline on the fixed synthetic corpus, with Qwen2.5-Omni's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer: Any, **sizes: int):
    """The tiny full-checkpoint config (thinker only); ``sizes`` override :data:`TEXT_SIZES`."""
    from transformers import Qwen2_5OmniConfig

    t = {**TEXT_SIZES, **sizes}
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in (
        ("audio", "<|AUDIO|>"), ("bos", "<|audio_bos|>"), ("eos", "<|audio_eos|>"), ("image", "<|IMAGE|>"),
        ("video", "<|VIDEO|>"), ("vbos", "<|vision_bos|>"), ("vend", "<|vision_eos|>"), ("im_end", "<|im_end|>"),
        ("pad", "<|endoftext|>"))}
    audio = dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128, num_mel_bins=128,
                 max_source_positions=1500, n_window=100, output_dim=t["hidden_size"])
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=t["hidden_size"],
                  fullatt_block_indexes=[0])
    text = dict(vocab_size=len(tokenizer), hidden_size=t["hidden_size"], num_hidden_layers=t["num_hidden_layers"],
                intermediate_size=t["intermediate_size"], num_attention_heads=t["num_attention_heads"],
                num_key_value_heads=t["num_key_value_heads"], head_dim=64, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
                tie_word_embeddings=False, eos_token_id=ids["im_end"], pad_token_id=ids["pad"],
                bos_token_id=ids["im_end"])
    thinker = dict(audio_config=audio, vision_config=vision, text_config=text, audio_token_index=ids["audio"],
                   image_token_index=ids["image"], video_token_index=ids["video"], audio_start_token_id=ids["bos"],
                   audio_end_token_id=ids["eos"], vision_start_token_id=ids["vbos"], vision_end_token_id=ids["vend"],
                   user_token_id=ids["im_end"], tie_word_embeddings=False)
    # no talker is written; its config only names this tokenizer's ids (the defaults lie outside this vocabulary)
    talker_ids = dict(tts_text_start_token_id=ids["pad"], tts_text_end_token_id=ids["pad"],
                      tts_text_pad_token_id=ids["pad"], vision_start_token_id=ids["vbos"],
                      vision_end_token_id=ids["vend"], audio_start_token_id=ids["bos"], audio_end_token_id=ids["eos"])
    cfg = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker_ids, enable_audio_output=False)
    cfg.dtype = "float32"
    cfg.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    return cfg


def write_tiny(out: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write the tiny checkpoint to ``out`` atomically (temp dir, then rename)."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

    out = Path(out)
    with atomic_dir(out) as tmp:
        tokenizer = build_tokenizer(seed)
        config = build_config(tokenizer, **sizes)
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(config.thinker_config).eval()
        with torch.no_grad():  # see the qwen2_audio family: lets the tiny model put real mass on a token
            model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
            scale_audio_convs(model.audio_tower, TINY_AUDIO_CONV_STD)
        state = {hub_key(k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
        GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30).save_pretrained(tmp)
        (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        (tmp / "README.md").write_text(
            f"Tiny random-initialised Qwen2.5-Omni thinker (seed {seed}) written by `python -m polyaudio_rl.tiny "
            "--family qwen2_5_omni`. Not a trained model: for tests only.\n")
    return out


def hub_key(name: str) -> str:
    """transformers thinker names → the full checkpoint's names (``thinker.`` prefix)."""
    return name if name.startswith("thinker.") else "thinker." + name


class AudioProcessor:
    """Qwen2.5-Omni's processor for text and audio: the checkpoint's Whisper feature extractor and tokenizer, and
    ``Qwen2_5OmniProcessor``'s audio rule (features padded to the 30 s window with their attention mask, each
    ``<|AUDIO|>`` expanded to ``((frames - 1) // 2 + 1 - 2) // 2 + 1`` audio tokens). transformers' own class needs
    an image and a video processor, and the video one imports torchvision."""

    def __init__(self, feature_extractor: Any, tokenizer: Any, chat_template: str | None):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.audio_token, self.audio_bos_token, self.audio_eos_token = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
        self.audio_token_id = tokenizer.convert_tokens_to_ids(self.audio_token)

    @classmethod
    def from_pretrained(cls, path: str) -> "AudioProcessor":
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        quiet_default_talker_config()  # AutoTokenizer reads the checkpoint's config
        tokenizer = AutoTokenizer.from_pretrained(path)
        template = tokenizer.chat_template
        tpl = Path(path) / "chat_template.jinja"
        if tpl.is_file():
            template = tpl.read_text()
        return cls(WhisperFeatureExtractor.from_pretrained(path), tokenizer, template)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)
        if self.chat_template:
            (Path(path) / "chat_template.jinja").write_text(self.chat_template)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """The chat template, each clip labelled ``Audio i:`` (the template's ``add_audio_id``): several clips in
        one turn need names the question and the answer can refer to."""
        kwargs.setdefault("add_audio_id", True)
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, text: list[str] | str, audio: list[Any] | None = None, sampling_rate: int = 16000,
                 return_tensors: str | None = None, padding: bool | str = False, **kwargs: Any) -> Any:
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        data: dict[str, Any] = {}
        if audio is not None and len(audio):
            feats = self.feature_extractor(list(audio), sampling_rate=sampling_rate, padding="max_length",
                                           return_attention_mask=True, return_tensors="pt")
            data["input_features"] = feats["input_features"]
            data["feature_attention_mask"] = feats["attention_mask"]
            lengths = iter(((feats["attention_mask"].sum(-1) - 1) // 2 + 1 - 2) // 2 + 1)
            expanded = []
            for t in texts:
                while self.audio_token in t:
                    t = t.replace(self.audio_token, "<|audio_placeholder|>" * int(next(lengths)), 1)
                expanded.append(t.replace("<|audio_placeholder|>", self.audio_token))
            texts = expanded
        enc = self.tokenizer(texts, padding=padding, return_tensors=return_tensors, add_special_tokens=False)
        return BatchFeature(data={**enc, **data}, tensor_type=return_tensors)


LOG = logging.getLogger(__name__)


class _ToDebugLog(logging.Handler):
    """Hands transformers' records to this module's logger at DEBUG (the process's log files where it has them)."""

    def emit(self, record: logging.LogRecord) -> None:
        LOG.debug("transformers, building its default Qwen2.5-Omni talker config (not loaded here): %s",
                  record.getMessage())


@functools.cache
def quiet_default_talker_config() -> None:
    """Send transformers' warnings about its own default talker config to the log, not the console, once a process.

    Reading a Qwen2.5-Omni config (``AutoConfig``; ``AutoTokenizer`` reads it too, and so does vLLM) formats the
    config's repr inside huggingface_hub's strict type check, and that repr builds transformers' *default*
    ``Qwen2_5OmniTalkerConfig``, whose default token ids (151647-151861) lie outside its default vocabulary (8448):
    seven "Model config: ... must be `None` or an integer within the vocabulary" warnings about a talker that is
    never loaded here, on every process that reads such a checkpoint. transformers emits each message once a process
    (``warning_once``). Building that default config here first, with the records routed to :data:`LOG` at DEBUG,
    uses up those seven messages; the same ones raised later by a load stay silent. Out-of-vocabulary ids of a
    checkpoint's own config (other numbers, other messages) still warn."""
    from transformers import Qwen2_5OmniTalkerConfig

    lg = logging.getLogger("transformers.configuration_utils")
    handler, propagate = _ToDebugLog(), lg.propagate
    lg.addHandler(handler)
    lg.propagate = False  # off transformers' own stderr handler (on the "transformers" logger) for this build
    try:
        Qwen2_5OmniTalkerConfig()
    finally:
        lg.removeHandler(handler)
        lg.propagate = propagate


def load_audio_processor(path: str) -> AudioProcessor:
    """The processor (:class:`AudioProcessor`), its mel features computed on each clip's own length."""
    proc = AudioProcessor.from_pretrained(path)
    use_length_aware_features(proc.feature_extractor)
    return proc


class Qwen25OmniFamily(ModelFamily):
    """Qwen2.5-Omni's thinker (NeMo-RL's audio GRPO model), text out."""

    name = "qwen2_5_omni"
    model_types = ("qwen2_5_omni", "qwen2_5_omni_thinker")
    architectures = ("Qwen2_5OmniForConditionalGeneration", "Qwen2_5OmniModel",
                     "Qwen2_5OmniThinkerForConditionalGeneration")
    hf_class = "Qwen2_5OmniThinkerForConditionalGeneration"
    vllm_architecture = "Qwen2_5OmniForConditionalGeneration"
    audio_placeholder = "<|AUDIO|>"
    audio_special_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>",
                            "<|vision_bos|>", "<|vision_eos|>")
    audio_tokens_per_second = 25.0
    max_clips = 5
    max_clip_seconds = 30.0
    length_aware_encoder = "yes (natively: the encoder takes each clip's feature length)"
    lora_target_modules = r"^(?:.*\.)?model\.layers\.\d+\.(?:self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    tiny_sizes = TEXT_SIZES
    vllm_arch = VLLM_ARCH
    vllm_lora_arch = VLLM_LORA_ARCH
    vllm_classes = {VLLM_ARCH: "polyaudio_rl.core.models.qwen2_5_omni_vllm:PolyAudioQwen25OmniThinker",
                    VLLM_LORA_ARCH: "polyaudio_rl.core.models.qwen2_5_omni_vllm:PolyAudioQwen25OmniThinkerLoRA"}

    def prepare_process(self) -> None:
        quiet_default_talker_config()

    def load_processor(self, path: str) -> Any:
        return load_audio_processor(path)

    def load_model(self, path: str, dtype: torch.dtype) -> Any:
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        quiet_default_talker_config()
        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype)

    def parts(self, model: Any) -> ModelParts:
        if not (hasattr(model, "audio_tower") and hasattr(model, "model") and hasattr(model.model, "layers")):
            raise TypeError(f"expected a Qwen2.5-Omni thinker, got {type(model).__name__}")
        return ModelParts(model.model, (model.audio_tower,), model.get_input_embeddings())

    def audio_token_count(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    def hub_key(self, name: str) -> str:
        return hub_key(name)

    def write_tiny(self, out: Path, seed: int = 0, **sizes: int) -> Path:
        return write_tiny(out, seed, **sizes)
