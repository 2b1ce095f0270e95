"""Speech clips are intelligible: an offline recogniser (pocketsphinx, its bundled en-us model) hears the key words.

flite voices are decoded freely (full language model). pocketsphinx's US acoustic model copes poorly with espeak-ng's
formant voices in free decoding, so for the American espeak-ng voices we check forced choice: with a grammar that
allows any number from three to fifty-nine and any of eight items, it must pick the number and item that were said.
"""
from __future__ import annotations

import numpy as np
import pytest

from datagen.__main__ import load_config
from datagen.generate import make_item
from datagen.sources.speech import ESPEAK_VOICES, Speaker, SpeechSynth
from datagen.tasks.base import Context
from datagen.text import number_words

pocketsphinx = pytest.importorskip("pocketsphinx")


def decoder():
    return pocketsphinx.Decoder(samprate=16000, loglevel="FATAL")


def hear(dec, x: np.ndarray) -> str:
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16).tobytes()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    return dec.hyp().hypstr if dec.hyp() else ""


def test_needle_fact_is_heard_in_a_flite_sample():
    from datagen.audio import decode

    cfg = load_config(None, ["speech_engines=[flite]"])
    ctx = Context(cfg, "train")
    s = next(r.sample for r in (make_item(ctx, "needle_qa", i) for i in range(0, 40, 4))
             if r.sample is not None and r.sample.key["type"] == "value" and r.sample.key["value"].isdigit())
    k = s.key["clips"][0]
    x, _ = decode(s.clips[k - 1].audio)
    heard = hear(decoder(), x)
    num = number_words(int(s.key["value"])).replace("-", " ")
    item = s.metadata["clips"][k - 1]["transcript"].split(number_words(int(s.key["value"])))[1].split()[0]
    assert num in heard, (heard, s.metadata["clips"][k - 1]["transcript"])
    assert item.rstrip("s") in heard, (heard, item)


@pytest.mark.parametrize("voice", [v for v in ESPEAK_VOICES if v[0].startswith("en-us")], ids=lambda v: v[0])
def test_espeak_us_voices_forced_choice(voice):
    v, g, a, p, s = voice
    sp = Speaker(f"espeak-ng:{v}:p{p}", "espeak-ng", v, g, a, p, s)
    items = ["apples", "boats", "lanterns", "birds", "chairs", "candles", "kites", "ducks"]
    alts = " | ".join(number_words(n).replace("-", " ") for n in range(3, 60))
    dec = decoder()
    dec.add_jsgf_string("g", f"#JSGF V1.0;\ngrammar g;\npublic <s> = [yesterday] [i] counted ( {alts} ) "
                             f"( {' | '.join(items)} ) [at the] [market];")
    dec.activate_search("g")
    rng = np.random.default_rng(len(v))
    n, item = int(rng.integers(3, 60)), items[int(rng.integers(len(items)))]
    x = SpeechSynth().say(sp, f"Yesterday I counted {number_words(n)} {item} at the market.")
    heard = hear(dec, x)
    assert f"{number_words(n).replace('-', ' ')} {item}" in heard, heard
