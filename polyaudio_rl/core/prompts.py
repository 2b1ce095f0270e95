"""The multi-audio prompt builder: one sample (2–5 clips + a question) → model inputs.

The prompt is the checkpoint's own chat template applied to a user turn whose content is one audio part per clip
followed by the question, so the template renders one audio placeholder span per clip, in clip order, then the
question (paper §3: interleaved text-audio representation); the placeholder token is the processor's
``audio_token`` (each model family's processor has one). The same :class:`MultiAudioPrompt` feeds

* vLLM: :func:`to_vllm_input` (``multi_modal_data={"audio": [(wave, 16000), ...]}``, clips in order), and
* transformers: :func:`processor_inputs` (``processor(text=..., audio=...)``; never ``audios=``, which 5.x ignores),
  whose ``input_features`` list every sequence's clips in order, sequence after sequence.

Bad input (zero clips, too many, a clip over the limit, empty/NaN audio, unreadable bytes, unknown sample rate) is a
:class:`PromptError` / :class:`~polyaudio_rl.core.audio.AudioError` naming the sample id.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from polyaudio_rl.core.schema import Sample

from .audio import TARGET_SR, AudioError, load_clip

ANSWER_TAG_INSTRUCTION = "Think briefly, then give your final answer inside <answer></answer>."


class PromptError(ValueError):
    """A sample cannot become a prompt; the message names the sample id and the problem."""


@dataclass
class MultiAudioPrompt:
    """A rendered prompt: chat-templated text with one audio placeholder per clip, and the clips (16 kHz mono)."""

    sample_id: str
    text: str
    audios: list[np.ndarray]
    sample: Sample | None = field(default=None, repr=False)

    @property
    def num_clips(self) -> int:
        return len(self.audios)


def render_question(question: str, choices: Sequence[str] = (), answer_tag: bool = False) -> str:
    """The question text with MCQ options ``(A) …`` appended (unless the question already lists them)."""
    text = question.strip()
    if choices and not all(c in text for c in choices):
        opts = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        text = f"{text}\nOptions:\n{opts}"
    if answer_tag:
        text = f"{text}\n{ANSWER_TAG_INSTRUCTION}"
    return text


def build_messages(question: str, num_clips: int, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages: optional system turn, then a user turn of ``num_clips`` audio parts and the question."""
    content: list[dict[str, Any]] = [{"type": "audio", "audio_url": f"clip{i + 1}"} for i in range(num_clips)]
    content.append({"type": "text", "text": question})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def audio_placeholder(processor: Any) -> str:
    """The token the chat template writes once per clip (the processor's ``audio_token``)."""
    tok = getattr(processor, "audio_token", None)
    if not isinstance(tok, str) or not tok:
        raise PromptError(f"{type(processor).__name__} has no audio_token: not an audio LLM processor")
    return tok


def render_text(processor: Any, question: str, num_clips: int, system_prompt: str | None = None) -> str:
    """Apply the checkpoint's chat template; check it produced exactly one placeholder per clip."""
    messages = build_messages(question, num_clips, system_prompt)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    placeholder = audio_placeholder(processor)
    if text.count(placeholder) != num_clips:
        raise PromptError(
            f"the chat template rendered {text.count(placeholder)} audio placeholders for {num_clips} clips; "
            f"the checkpoint's chat_template must emit one {placeholder} per audio part"
        )
    return text


def build_prompt(
    sample: Sample | dict[str, Any],
    processor: Any,
    max_clips: int = 5,
    min_clips: int = 1,
    max_clip_seconds: float = 30.0,
    system_prompt: str | None = "You are a helpful assistant.",
    answer_tag: bool = False,
) -> MultiAudioPrompt:
    """Decode, resample and validate every clip of ``sample`` and render its prompt text."""
    if isinstance(sample, dict):
        sample = Sample.from_row(sample)
    sid = sample.id
    n = len(sample.clips)
    if n == 0:
        raise PromptError(f"sample {sid}: has no clips (a multi-audio prompt needs at least {max(min_clips, 1)})")
    if n > max_clips:
        raise PromptError(f"sample {sid}: has {n} clips, more than the allowed {max_clips} (data.max_clips)")
    if n < min_clips:
        raise PromptError(f"sample {sid}: has {n} clips, fewer than the required {min_clips} (data.min_clips)")
    audios = [
        load_clip(c.audio, c.sample_rate or None, sample_id=sid, clip=i + 1, max_seconds=max_clip_seconds)
        for i, c in enumerate(sample.clips)
    ]
    question = render_question(sample.question, sample.choices, answer_tag)
    text = render_text(processor, question, n, system_prompt)
    return MultiAudioPrompt(sample_id=sid, text=text, audios=audios, sample=sample)


def build_prompt_from_config(sample: Sample | dict[str, Any], processor: Any, data_cfg: Any) -> MultiAudioPrompt:
    """:func:`build_prompt` with the limits of a :class:`~polyaudio_rl.core.config.DataConfig`."""
    return build_prompt(
        sample, processor, max_clips=data_cfg.max_clips, min_clips=data_cfg.min_clips,
        max_clip_seconds=data_cfg.max_clip_seconds, system_prompt=data_cfg.system_prompt,
        answer_tag=data_cfg.answer_tag,
    )


def prompt_from_arrays(
    sample_id: str, question: str, audios: Sequence[np.ndarray], processor: Any, sample_rates: Sequence[int] | None = None,
    max_clips: int = 5, max_clip_seconds: float = 30.0, system_prompt: str | None = "You are a helpful assistant.",
) -> MultiAudioPrompt:
    """Build a prompt from in-memory waveforms (e.g. an HTTP request's decoded audio parts)."""
    if len(audios) == 0:
        raise PromptError(f"sample {sample_id}: has no clips")
    if len(audios) > max_clips:
        raise PromptError(f"sample {sample_id}: has {len(audios)} clips, more than the allowed {max_clips}")
    rates = list(sample_rates) if sample_rates is not None else [TARGET_SR] * len(audios)
    waves = [
        load_clip(np.asarray(a), sr, sample_id=sample_id, clip=i + 1, max_seconds=max_clip_seconds)
        for i, (a, sr) in enumerate(zip(audios, rates))
    ]
    return MultiAudioPrompt(sample_id, render_text(processor, question, len(waves), system_prompt), waves)


def to_vllm_input(prompt: MultiAudioPrompt) -> dict[str, Any]:
    """vLLM's prompt dict; audios are (float32 16 kHz array, 16000) tuples in clip order (no resampling needed)."""
    return {"prompt": prompt.text, "multi_modal_data": {"audio": [(a, TARGET_SR) for a in prompt.audios]}}


def processor_inputs(prompts: Sequence[MultiAudioPrompt], processor: Any, padding_side: str = "left") -> Any:
    """The processor's batch for several prompts: ``input_ids``, ``attention_mask``, ``input_features``
    (n_clips_total, mel, frames) and ``feature_attention_mask``, clips in order, prompt after prompt."""
    if not prompts:
        raise PromptError("processor_inputs: empty batch")
    flat = [a for p in prompts for a in p.audios]
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = padding_side
    try:
        batch = processor(
            text=[p.text for p in prompts], audio=flat, sampling_rate=TARGET_SR, return_tensors="pt", padding=True
        )
    finally:
        tok.padding_side = old_side
    n_feat = batch["input_features"].shape[0] if "input_features" in batch else 0
    if n_feat != len(flat):
        raise PromptError(f"processor produced features for {n_feat} clips, expected {len(flat)} "
                          f"(samples {[p.sample_id for p in prompts]})")
    return batch


__all__ = [
    "AudioError", "MultiAudioPrompt", "PromptError", "audio_placeholder", "build_messages", "build_prompt", "build_prompt_from_config",
    "processor_inputs", "prompt_from_arrays", "render_question", "render_text", "to_vllm_input",
]
