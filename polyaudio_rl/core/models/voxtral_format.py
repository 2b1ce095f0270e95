"""Voxtral's two on-disk formats, written offline: the tekken tokenizer and Mistral-format weights beside the HF ones.

A Voxtral checkpoint directory holds both formats because its two consumers read different ones:

* transformers reads ``config.json`` (``VoxtralConfig``) + ``model.safetensors`` (hub names: ``audio_tower.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``) and takes its tokenizer
  (``MistralCommonBackend``) from ``tekken.json``;
* vLLM's Voxtral needs ``tokenizer_mode="mistral"`` (its processor is mistral_common's), and with it reads
  ``params.json`` + ``consolidated.safetensors`` (Mistral names: ``layers.N.attention.wq``, ``mm_whisper_embeddings.*``).

:func:`to_mistral_weights` maps hub names to Mistral names. vLLM's Mistral loader permutes ``wq``/``wk`` from
Mistral's interleaved rotary layout into the half-split one HF uses, so the HF tensors are stored under the inverse
permutation (:func:`_unpermute`) — without it vLLM's queries and keys rotate the wrong pairs and the two stacks
disagree. The same mapping serves the weight sync: vLLM's ``load_weights`` for Voxtral takes checkpoint (Mistral)
names. The encoder's ``embed_positions`` are Whisper sinusoids: vLLM recomputes them and ignores stored ones, so the
HF weights must hold the same sinusoids for the two to agree.

``tekken.json`` (version v7): 256 byte tokens then BPE merges (ranks in merge order, what tiktoken expects), trained
here on a fixed synthetic corpus, after a block of special tokens in which ``[AUDIO]`` is id 24 and
``[BEGIN_AUDIO]`` id 25 (transformers' ``VoxtralProcessor`` hard-codes 24), and an ``audio`` section: 16 kHz,
12.5 frames per second, 128 mel bins, clips padded to 30 s windows — so each clip of at most 30 s costs 375 tokens.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import torch

NUM_SPECIAL = 100
AUDIO_ID = 24
BEGIN_AUDIO_ID = 25
TRANSCRIBE_ID = 34
SAMPLING_RATE = 16000
FRAME_RATE = 12.5
CHUNK_SECONDS = 30.0
TOKENS_PER_CLIP = int(CHUNK_SECONDS * FRAME_RATE)  # 375: every clip of <= 30 s is padded to one 30 s window
MEL_BINS = 128
HOP_LENGTH = 160
WINDOW_SIZE = 400

# tekken's pre-tokenisation pattern (tiktoken pat_str), as in Mistral's released tekken.json files
PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
           r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")

_NAMED_SPECIALS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", AUDIO_ID: "[AUDIO]", BEGIN_AUDIO_ID: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]",
    TRANSCRIBE_ID: "[TRANSCRIBE]",
}


def special_tokens() -> list[dict[str, Any]]:
    """The ``NUM_SPECIAL`` special tokens of the tiny tekken file (unnamed ranks are ``<SPECIAL_i>`` fillers)."""
    return [{"rank": i, "token_str": _NAMED_SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
            for i in range(NUM_SPECIAL)]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte↔unicode table, inverted: the byte each printable character of a byte-level BPE token stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def train_merges(corpus: list[str], vocab_size: int) -> list[bytes]:
    """Byte-level BPE trained on ``corpus`` with tekken's pattern; returns the tokens after the 256 single bytes, in
    merge order (so rank = 256 + position, the order tiktoken applies them in)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    dec = _byte_decoder()
    out: list[bytes] = []
    seen: set[bytes] = {bytes([b]) for b in range(256)}
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        token = bytes(dec[c] for c in a + b)
        if token not in seen:
            seen.add(token)
            out.append(token)
    return out


def tekken_dict(merged: list[bytes]) -> dict[str, Any]:
    """The ``tekken.json`` content (version v7, with the audio section) for byte tokens + ``merged``."""
    vocab = [bytes([b]) for b in range(256)] + merged
    entries = [{"rank": i, "token_bytes": base64.b64encode(t).decode(), "token_str": t.decode("utf-8", "replace")}
               for i, t in enumerate(vocab)]
    return {
        "config": {"pattern": PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": len(vocab) + NUM_SPECIAL,
                   "default_num_special_tokens": NUM_SPECIAL, "version": "v7"},
        "vocab": entries,
        "special_tokens": special_tokens(),
        "audio": {"sampling_rate": SAMPLING_RATE, "frame_rate": FRAME_RATE, "chunk_length_s": CHUNK_SECONDS,
                  "audio_encoding_config": {"num_mel_bins": MEL_BINS, "hop_length": HOP_LENGTH,
                                            "window_size": WINDOW_SIZE}},
    }


# ------------------------------------------------------------------------------------------ Mistral-format weights
def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-split rotary layout → Mistral's interleaved one; the inverse of vLLM's ``maybe_remap_mistral``
    permute (rows of each head: ``(2, hd/2)`` → ``(hd/2, 2)``)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_LM_RULES = [
    (r"language_model\.model\.embed_tokens\.weight", "tok_embeddings.weight"),
    (r"language_model\.model\.norm\.weight", "norm.weight"),
    (r"language_model\.lm_head\.weight", "output.weight"),
    (r"language_model\.model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"layers.\1.attention.w\2.weight"),
    (r"language_model\.model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attention_norm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"layers.\1.feed_forward.w1.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"layers.\1.feed_forward.w2.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"layers.\1.feed_forward.w3.weight"),
]
_ENC = "mm_whisper_embeddings.whisper_encoder."
_AUDIO_RULES = [
    (r"audio_tower\.conv1\.(weight|bias)", _ENC + r"conv_layers.0.\1"),
    (r"audio_tower\.conv2\.(weight|bias)", _ENC + r"conv_layers.1.\1"),
    (r"audio_tower\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)",
     _ENC + r"transformer.layers.\1.attention.w\2.\3"),
    (r"audio_tower\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", _ENC + r"transformer.layers.\1.attention.wo.\2"),
    (r"audio_tower\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
     _ENC + r"transformer.layers.\1.attention_norm.\2"),
    (r"audio_tower\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", _ENC + r"transformer.layers.\1.ffn_norm.\2"),
    (r"audio_tower\.layers\.(\d+)\.fc([12])\.(weight|bias)", _ENC + r"transformer.layers.\1.feed_forward.w\2.\3"),
    (r"audio_tower\.layer_norm\.(weight|bias)", _ENC + r"transformer.norm.\1"),
    (r"multi_modal_projector\.linear_1\.weight", "mm_whisper_embeddings.audio_language_projection.0.weight"),
    (r"multi_modal_projector\.linear_2\.weight", "mm_whisper_embeddings.audio_language_projection.2.weight"),
]
# vLLM computes the encoder's sinusoid positions itself and ignores a stored copy
_DROPPED = re.compile(r"audio_tower\.embed_positions\.weight")


def mistral_name(hub_name: str) -> str | None:
    """The Mistral (``consolidated.safetensors``) name of a hub-named tensor; ``None`` for one vLLM does not load."""
    if _DROPPED.fullmatch(hub_name):
        return None
    for pattern, repl in _LM_RULES + _AUDIO_RULES:
        if re.fullmatch(pattern, hub_name):
            return re.sub(pattern, repl, hub_name)
    raise KeyError(f"no Mistral-format name for Voxtral tensor {hub_name!r}")


def to_mistral_weights(weights: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Hub-named Voxtral tensors → Mistral names, with ``wq``/``wk`` in Mistral's rotary layout (what vLLM's loader
    reads from ``consolidated.safetensors`` and what its ``load_weights`` takes in a weight sync)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        new = mistral_name(name)
        if new is None:
            continue
        if new.startswith("layers.") and new.endswith(".attention.wq.weight"):
            t = _unpermute(t, n_heads)
        elif new.startswith("layers.") and new.endswith(".attention.wk.weight"):
            t = _unpermute(t, n_kv_heads)
        out[new] = t.contiguous()
    return out


def params_dict(config: Any) -> dict[str, Any]:
    """``params.json`` (Mistral's config) for an HF ``VoxtralConfig``: what vLLM builds its Voxtral from."""
    t, a = config.text_config, config.audio_config
    rope_theta = (getattr(t, "rope_parameters", None) or {}).get("rope_theta") or getattr(t, "rope_theta", 1e8)
    return {
        "dim": t.hidden_size, "n_layers": t.num_hidden_layers, "head_dim": t.head_dim,
        "hidden_dim": t.intermediate_size, "n_heads": t.num_attention_heads, "n_kv_heads": t.num_key_value_heads,
        "rope_theta": float(rope_theta), "norm_eps": t.rms_norm_eps, "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_position_embeddings, "tied_embeddings": bool(t.tie_word_embeddings),
        # the stored weights' dtype: without it vLLM's dtype "auto" would not follow config.json's
        **({"dtype": str(config.dtype).removeprefix("torch.")} if getattr(config, "dtype", None) else {}),
        "multimodal": {"whisper_model_args": {
            "encoder_args": {
                "audio_encoding_args": {"sampling_rate": SAMPLING_RATE, "frame_rate": FRAME_RATE,
                                        "num_mel_bins": a.num_mel_bins, "hop_length": HOP_LENGTH,
                                        "window_size": WINDOW_SIZE, "chunk_length_s": CHUNK_SECONDS},
                "dim": a.hidden_size, "n_layers": a.num_hidden_layers, "head_dim": a.hidden_size // a.num_attention_heads,
                "hidden_dim": a.intermediate_size, "n_heads": a.num_attention_heads, "vocab_size": a.vocab_size,
                "max_source_positions": a.max_source_positions,
            },
            "downsample_args": {"downsample_factor": a.intermediate_size // a.hidden_size},
        }},
    }


def write_mistral_files(out: Path, config: Any, hub_weights: dict[str, torch.Tensor]) -> None:
    """``params.json`` + ``consolidated.safetensors`` beside the HF files in ``out``."""
    from safetensors.torch import save_file

    t = config.text_config
    (out / "params.json").write_text(json.dumps(params_dict(config), indent=2) + "\n")
    save_file(to_mistral_weights(hub_weights, t.num_attention_heads, t.num_key_value_heads),
              str(out / "consolidated.safetensors"), metadata={"format": "pt"})


__all__ = [
    "AUDIO_ID", "BEGIN_AUDIO_ID", "NUM_SPECIAL", "TOKENS_PER_CLIP", "mistral_name", "params_dict", "special_tokens",
    "tekken_dict", "to_mistral_weights", "train_merges", "write_mistral_files",
]
