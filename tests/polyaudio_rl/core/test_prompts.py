import numpy as np
import pytest
import torch

from polyaudio_rl.core.audio import AudioError
from polyaudio_rl.core.prompts import (
    PromptError, build_prompt, processor_inputs, prompt_from_arrays, render_question, to_vllm_input,
)


def test_three_clip_prompt_interleaves_audio_lines_then_question(tiny_processor, sample_factory):
    p = build_prompt(sample_factory("s1", (1.0, 2.0, 1.5)), tiny_processor)
    lines = [l for l in p.text.splitlines() if l.startswith("Audio ")]
    assert lines == [f"Audio {i}: <|audio_bos|><|AUDIO|><|audio_eos|>" for i in (1, 2, 3)]
    assert p.text.index("Audio 3:") < p.text.index("Which clip is the loudest?")
    assert p.text.endswith("<|im_start|>assistant\n")
    assert [len(a) for a in p.audios] == [16000, 32000, 24000]


def test_vllm_input_keeps_clip_order(tiny_processor, sample_factory):
    p = build_prompt(sample_factory("s1", (1.0, 2.0, 1.5)), tiny_processor)
    mm = to_vllm_input(p)["multi_modal_data"]["audio"]
    assert [len(a) for a, _sr in mm] == [16000, 32000, 24000] and all(sr == 16000 for _a, sr in mm)


def test_batch_features_keep_clip_order_across_samples(tiny_processor, sample_factory):
    a = build_prompt(sample_factory("a", (1.0, 3.0)), tiny_processor)
    b = build_prompt(sample_factory("b", (2.0, 0.5, 4.0)), tiny_processor)
    batch = processor_inputs([a, b, a], tiny_processor)
    assert batch["input_features"].shape[0] == 2 + 3 + 2
    # valid frames per clip (100 frames/s) in the order a1 a2 b1 b2 b3 a1 a2
    frames = batch["feature_attention_mask"].sum(-1).tolist()
    assert frames == [100, 300, 200, 50, 400, 100, 300]
    # each sample's features equal those computed alone
    alone = processor_inputs([b], tiny_processor)
    assert torch.allclose(batch["input_features"][2:5], alone["input_features"])
    # audio tokens per clip: mel frames -> conv stride 2 -> avg-pool 2: ((f - 1)//2 + 1 - 2)//2 + 1, ~25/s
    audio_id = tiny_processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    per_seq = (batch["input_ids"] == audio_id).sum(-1).tolist()
    assert per_seq == [25 + 75, 50 + 12 + 100, 25 + 75]


def test_choices_are_rendered_as_options():
    text = render_question("Which clip differs?", ["Audio 1", "Audio 2"], answer_tag=True)
    assert "(A) Audio 1\n(B) Audio 2" in text and "<answer></answer>" in text
    assert render_question("Pick (A) x or (B) y", ["x", "y"]) == "Pick (A) x or (B) y"


@pytest.mark.parametrize(
    "durations, kwargs, message",
    [
        ((), {}, "sample bad: has no clips"),
        ((1.0,) * 6, {}, "sample bad: has 6 clips, more than the allowed 5"),
        ((1.0, 1.0, 1.0), {"max_clips": 2}, "has 3 clips, more than the allowed 2"),
        ((1.0, 31.0), {}, "sample bad, clip 2: clip lasts 31.00 s"),
        ((1.0,), {"min_clips": 2}, "fewer than the required 2"),
    ],
)
def test_bad_samples_name_the_sample(tiny_processor, sample_factory, durations, kwargs, message):
    with pytest.raises((PromptError, AudioError)) as err:
        build_prompt(sample_factory("bad", durations), tiny_processor, **kwargs)
    assert message in str(err.value)


def test_corrupt_clip_bytes_name_sample_and_clip(tiny_processor, sample_factory):
    s = sample_factory("c9", (1.0, 1.0))
    s.clips[1].audio = b"RIFF....garbage"
    with pytest.raises(AudioError, match="sample c9, clip 2: unreadable audio"):
        build_prompt(s, tiny_processor)


def test_nan_array_from_request_is_rejected(tiny_processor):
    bad = np.full(1600, np.nan, np.float32)
    with pytest.raises(AudioError, match="sample req-1, clip 1: audio has 1600 NaN/inf"):
        prompt_from_arrays("req-1", "q?", [bad], tiny_processor)
