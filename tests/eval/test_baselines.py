"""Baseline protocols (§4.1.2): concat with 2 s silence, pair protocol."""
from __future__ import annotations

import numpy as np
import pytest

from eval.baselines import apply_protocol, join_clips, protocol_hint


def clips(*secs):
    return [np.full(int(s * 16000), i + 1, dtype=np.float32) for i, s in enumerate(secs)]


def test_join_clips_puts_exactly_two_seconds_of_silence_between():
    a, b, c = clips(1.0, 0.5, 0.25)
    out = join_clips([a, b, c], silence_s=2.0)
    assert out.shape == (16000 + 32000 + 8000 + 32000 + 4000,)
    assert np.all(out[:16000] == 1) and np.all(out[16000:48000] == 0)
    assert np.all(out[48000:56000] == 2) and np.all(out[56000:88000] == 0) and np.all(out[88000:] == 3)


@pytest.mark.parametrize("n, protocol, lengths", [
    (3, "native", [16000, 16000, 16000]),
    (3, "concat", [3 * 16000 + 2 * 32000]),
    (2, "pair", [16000, 16000]),
    (3, "pair", [16000, 2 * 16000 + 32000]),
    (5, "pair", [16000, 4 * 16000 + 3 * 32000]),
    (1, "concat", [16000]),
])
def test_protocol_layouts(n, protocol, lengths):
    out = apply_protocol(clips(*[1.0] * n), protocol, 2.0)
    assert [len(x) for x in out] == lengths
    assert out[0][0] == 1  # clip 1 always first


def test_pair_keeps_clip_order_in_the_joined_audio():
    out = apply_protocol(clips(1.0, 1.0, 1.0, 1.0), "pair", 2.0)
    nz = out[1][out[1] != 0]
    assert list(dict.fromkeys(nz.tolist())) == [2.0, 3.0, 4.0]


def test_unknown_protocol_and_hints():
    with pytest.raises(ValueError, match="unknown protocol 'mono'"):
        apply_protocol(clips(1.0), "mono")
    assert protocol_hint(3, "native") == ""
    assert "Audio 1 to Audio 3" in protocol_hint(3, "concat") and "2 seconds of silence" in protocol_hint(3, "concat")
    assert protocol_hint(2, "pair") == "" and "Audio 2 to Audio 4" in protocol_hint(4, "pair")
