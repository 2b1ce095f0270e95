"""The starter curriculum: exact-key variants of three of Table 2's tasks built from plain signals.

A random tiny checkpoint (2 audio layers, 2 text layers, random weights) cannot learn speech, sound events or
music on two CPU cores in minutes; it can learn to tell clips apart by signal kind and level. The starter variants
keep each task's question form, key type and rule verifier, and change only the audio:

- ``odd_one_out``: steady tones and one white-noise clip — which clip is the odd one out (key ``clip``).
- ``entailment``: low tones, or low tones and one high tone — is the claim "one of the clips is a high-pitched tone"
  supported (key ``yesno``).
- ``counting``: 1 s clips, each holding either one beep or silence — how many beeps over all clips (key ``count``;
  the total is uniform over 1..n).

Why these signals: the tiny model's audio encoder is random and frozen (LoRA trains the language model), and its
per-frame LayerNorm removes most of a clip's overall level — a loudness comparison stayed at its prior on every seed
(measured: 0.500 after SFT and after GRPO, seeds 0–2). Noise, a high tone and a beep change the spectrum's *shape*,
which the random features keep. The three tasks' audio never looks alike (one noise clip among tones; tones only;
beeps and silence), so the random 2-layer model, which learns the audio cue before it reads the question, still
learns each task's answer form.

Selected by ``DatagenConfig.curriculum='starter'`` (or ``--preset starter``); the paper's eleven tasks stay the
default. Every item records ``answer_space`` (the answers a guess could give), from which the held-out chance level
is computed.
"""
from __future__ import annotations

import numpy as np

from .base import ClipDraft, Draft, choose

STARTER_TASKS = ("odd_one_out", "entailment", "counting")
LICENCE = "synthetic (datagen), CC0"
BEEP_HZ = 1000.0
BEEP_S = 0.3
COUNT_CLIP_S = 1.0


def is_starter(cfg) -> bool:
    return getattr(cfg, "curriculum", "paper") == "starter" or getattr(cfg, "preset", "") == "starter"


def _tone(sr: int, hz: float, seconds: float, amp: float, fade: bool = True) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    # 10 ms fades: no clicks at the ends
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01) if fade else 1.0
    return (amp * ramp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _sine_clip(sr: int, hz: float, seconds: float, fade: bool = True) -> ClipDraft:
    """A steady sine tone clip at amplitude 0.3, with its metadata."""
    return ClipDraft(_tone(sr, hz, seconds, 0.3, fade=fade),
                     {"kind": "signal", "signal": "sine", "hz": hz, "seconds": seconds}, f"sine:{hz:.1f}:{seconds:.3f}",
                     LICENCE)


def _tone_or_noise(sr: int, rng, noise: bool) -> ClipDraft:
    """One 0.5–1.5 s clip: white noise, or a steady sine tone at 200–1000 Hz (no fades: byte-identical to the clips
    of the 'signal' odd_one_out variant)."""
    dur = float(rng.uniform(0.5, 1.5))
    if noise:
        wav = (0.2 * rng.standard_normal(int(dur * sr))).astype(np.float32)
        return ClipDraft(wav, {"kind": "signal", "signal": "white noise", "seconds": dur}, f"noise:{dur:.3f}", LICENCE)
    return _sine_clip(sr, float(rng.uniform(200, 1000)), dur, fade=False)


def odd_noise(ctx, rng, n) -> Draft:
    """n-1 steady sine tones (200–1000 Hz) and one white-noise clip, each 0.5–1.5 s."""
    k = int(rng.integers(1, n + 1))
    clips = [_tone_or_noise(ctx.cfg.sample_rate, rng, i == k) for i in range(1, n + 1)]
    q = choose(rng, ["Which clip is noise rather than a steady tone?", "Which of these clips is the odd one out?"])
    return Draft(clips, q, f"Clip {k}.", {"type": "clip", "value": k}, list(range(1, n + 1)),
                 extra={"variant": "signal", "odd": "noise", "common": "tone", "answer_space": list(range(1, n + 1))})


def pitch_claim(ctx, rng, n) -> Draft:
    """n clips (0.5–1.5 s) of steady low tones (200–500 Hz), and in half of the items one of them a high tone
    (2–4 kHz); the claim "one of the clips is a high-pitched tone" is supported (Yes) or not (No). No clip is noise:
    the audio of an entailment item never looks like an odd_one_out item (one noise clip among tones), so the audio
    alone already tells the answer form (with a noise claim, a Yes item and an odd_one_out item sounded the same and
    SFT answered odd_one_out "Yes." on one seed in three)."""
    sr = ctx.cfg.sample_rate
    has_high = bool(rng.random() < 0.5)
    k = int(rng.integers(1, n + 1)) if has_high else 0
    clips = []
    for i in range(1, n + 1):
        dur = float(rng.uniform(0.5, 1.5))
        clips.append(_sine_clip(sr, float(rng.uniform(2000, 4000) if i == k else rng.uniform(200, 500)), dur))
    claim = choose(rng, ["One of the clips is a high-pitched tone.", "At least one of these clips is a high tone."])
    q = choose(rng, ["Based on the clips, is the statement '{c}' supported?",
                     "Is the following statement true according to the audio clips: '{c}'?"]).format(c=claim)
    label = "Yes" if has_high else "No"
    relevant = [k] if has_high else list(range(1, n + 1))
    return Draft(clips, q, f"{label}.", {"type": "yesno", "value": label}, relevant,
                 extra={"variant": "pitch_claim", "claim": claim, "high_clip": k, "answer_space": ["Yes", "No"]})


def count_beeps(ctx, rng, n) -> Draft:
    """n clips of 1 s; each holds one 0.3 s 1 kHz beep (at a random onset) or silence. The total is drawn uniformly
    from 1..n (then which clips beep), so a constant answer scores 1/n — the chance level the report prints — and
    not the ~0.55 a per-clip coin flip would give the answer 1."""
    sr = ctx.cfg.sample_rate
    total = int(rng.integers(1, n + 1))
    beeping = set(int(i) for i in rng.choice(n, size=total, replace=False))
    per = [int(i in beeping) for i in range(n)]
    clips = []
    for c in per:
        wav = np.zeros(int(COUNT_CLIP_S * sr), dtype=np.float32)
        meta = {"kind": "signal", "signal": "beeps", "seconds": COUNT_CLIP_S, "beeps": []}
        if c:
            onset = round(float(rng.uniform(0.05, COUNT_CLIP_S - BEEP_S - 0.05)), 3)
            a = int(onset * sr)
            beep = _tone(sr, BEEP_HZ, BEEP_S, 0.4)
            wav[a: a + beep.size] = beep
            meta["beeps"].append({"start": onset, "end": round(onset + BEEP_S, 3)})
        clips.append(ClipDraft(wav, meta, f"beeps:{c}:{meta['beeps'][0]['start'] if c else 0}", LICENCE))
    q = choose(rng, ["How many beeps are there across all {n} clips?", "Count the beeps in these {n} clips. How many "
                     "are there in total?"]).format(n=n)
    return Draft(clips, q, f"{total}.", {"type": "count", "value": total, "tolerance": 0}, list(range(1, n + 1)),
                 extra={"variant": "beeps", "per_clip": per, "target": "beep", "answer_space": list(range(1, n + 1))})
