"""Request validation of audio parts (eval.validate): table tests, no server."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from eval.validate import RequestError, normalize_audio_parts
from polyaudio_rl.core.audio import encode_flac, encode_wav


def tone(seconds, sr=16000, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def part(data: bytes, fmt: str = "wav"):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def user(*parts):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "Which clip is the loudest?"}]}]


def decoded_seconds(p):
    wave, sr = sf.read(io.BytesIO(base64.b64decode(p["input_audio"]["data"])))
    return sr, wave.ndim, len(wave) / sr


def test_valid_parts_are_normalised_in_order():
    stereo_44k = np.stack([tone(2.0, 44100), tone(2.0, 44100)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo_44k, 44100, format="WAV")
    msgs = user(part(encode_wav(tone(1.0))), part(encode_flac(tone(3.0)), "flac"), part(buf.getvalue()),
                {"type": "audio_url", "audio_url": {"url": "data:audio/flac;base64," +
                                                    base64.b64encode(encode_flac(tone(0.5))).decode()}})
    assert normalize_audio_parts(msgs, max_clips=5) == 4
    got = [decoded_seconds(p) for p in msgs[0]["content"][:4]]
    assert [g[0] for g in got] == [16000] * 4 and [g[1] for g in got] == [1] * 4  # 16 kHz mono WAV
    assert [round(g[2], 2) for g in got] == [1.0, 3.0, 2.0, 0.5]  # order kept
    assert all(p["input_audio"]["format"] == "wav" for p in msgs[0]["content"][:4])
    assert msgs[0]["content"][4]["type"] == "text"


@pytest.mark.parametrize("msgs, needle", [
    (user(*[part(encode_wav(tone(0.5)))] * 6), "too many audio clips: 6 audio parts, at most 5"),
    (user(part(encode_wav(tone(0.5))), part(encode_wav(tone(31.0)))), "audio part 2 (messages[0].content[1]): clip lasts 31.00 s, over the 30 s limit"),
    (user({"type": "input_audio", "input_audio": {"data": "not*base64!", "format": "wav"}}), "invalid base64"),
    (user(part(encode_wav(tone(0.5)), "mp3")), "unsupported audio format 'mp3'"),
    (user(part(encode_wav(tone(0.5)), "flac")), "data is not a FLAC file (it looks like WAV"),
    (user(part(b"RIFF" + b"\x00" * 40)), "unreadable audio"),
    (user({"type": "audio_url", "audio_url": {"url": "http://example.com/a.wav"}}), "remote URLs are not fetched"),
    (user({"type": "audio_url", "audio_url": {"url": "data:audio/ogg;base64,AAAA"}}), "unsupported audio format 'audio/ogg'"),
    (user(part(encode_wav(np.zeros(0, np.float32)))), "audio is empty"),
    (user({"type": "input_audio", "input_audio": "AAAA"}), "input_audio must be an object"),
])
def test_bad_parts_name_the_problem(msgs, needle):
    with pytest.raises(RequestError) as ei:
        normalize_audio_parts(msgs, max_clips=5, max_clip_seconds=30.0)
    assert ei.value.status == 400
    assert needle in str(ei.value)


def test_text_only_and_string_content_pass_untouched():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert normalize_audio_parts(msgs) == 0
    assert msgs[1]["content"] == [{"type": "text", "text": "hi"}]
