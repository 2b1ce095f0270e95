import io

import numpy as np
import pytest
import soundfile as sf

from polyaudio_rl.core.audio import AudioError, decode, encode_flac, encode_wav, load_clip


def _tone(seconds, sr=16000, f=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_flac_and_wav_round_trip():
    wave = _tone(0.5)
    for enc in (encode_flac, encode_wav):
        out, sr = decode(enc(wave))
        assert sr == 16000 and out.shape == wave.shape
        assert np.max(np.abs(out - wave)) < 1e-3


def test_resample_44k1_stereo_to_16k_mono_keeps_pitch_and_length():
    sr = 44100
    left = _tone(1.0, sr, 1000.0)
    stereo = np.stack([left, left], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, sr, format="WAV")
    out = load_clip(buf.getvalue(), sample_id="s", clip=1)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out)
    assert abs(peak_hz - 1000.0) < 2.0


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (b"", {}, "sample s7, clip 2: audio bytes are empty"),
        (b"not audio at all", {}, "sample s7, clip 2: unreadable audio"),
        (np.zeros(0, np.float32), {"sample_rate": 16000}, "audio is empty"),
        (np.array([0.0, np.nan, np.inf], np.float32), {"sample_rate": 16000}, "2 NaN/inf samples"),
        (np.zeros(16000 * 31, np.float32), {"sample_rate": 16000}, "lasts 31.00 s, over the 30 s limit"),
        (np.zeros(1600, np.float32), {"sample_rate": None}, "unknown sample rate"),
        ("/definitely/missing.wav", {}, "audio file not found: /definitely/missing.wav"),
    ],
)
def test_bad_clips_raise_clear_errors(data, kwargs, message):
    with pytest.raises(AudioError) as err:
        load_clip(data, sample_id="s7", clip=2, **kwargs)
    assert message in str(err.value)
    assert "sample s7" in str(err.value)


def test_stated_rate_must_match_file():
    with pytest.raises(AudioError, match="stated sample rate 8000 differs from the file's 16000"):
        load_clip(encode_wav(_tone(0.1)), sample_rate=8000, sample_id="x", clip=1)
