"""Music with exact labels: MIDI we write (mido) rendered with a General MIDI soundfont (FluidSynth).

Tempo, key, mode, instruments, drums and every note onset are known because we wrote them. Reverb and chorus
are off, so a piece renders to the same samples every time (determinism).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from ..audio import SR, SourceError, normalize, trim

NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
# (GM program, name, family)
INSTRUMENTS = [
    (0, "piano", "keyboard"), (4, "electric piano", "keyboard"), (11, "vibraphone", "mallet"),
    (12, "marimba", "mallet"), (19, "church organ", "organ"), (24, "nylon guitar", "guitar"),
    (27, "electric guitar", "guitar"), (40, "violin", "bowed strings"), (42, "cello", "bowed strings"),
    (48, "string ensemble", "bowed strings"), (56, "trumpet", "brass"), (57, "trombone", "brass"),
    (65, "alto saxophone", "reed"), (71, "clarinet", "reed"), (73, "flute", "pipe"), (75, "pan flute", "pipe"),
    (46, "harp", "plucked"), (52, "choir", "voice"), (80, "square synth lead", "synth"),
]
BY_NAME = {n: (p, n, f) for p, n, f in INSTRUMENTS}
PROGRESSIONS = {"major": [[0, 4, 5, 3], [0, 3, 4, 0], [0, 5, 3, 4]], "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 4]]}


@dataclass
class Piece:
    tempo: int                     # beats per minute
    tonic: int                     # 0..11 (C..B)
    mode: str                      # major | minor
    lead: str                      # instrument name (INSTRUMENTS)
    accompaniment: str | None      # instrument name or None (solo)
    drums: bool
    bars: int = 4
    seed: int = 0
    notes: list = field(default_factory=list, repr=False)  # (start_s, end_s, channel, pitch, velocity)

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def instruments(self) -> list[str]:
        return [self.lead] + ([self.accompaniment] if self.accompaniment else [])

    def describe(self) -> str:
        inst = " and ".join(self.instruments)
        pace = "slow" if self.tempo < 90 else "fast" if self.tempo >= 130 else "moderate"
        dr = " with a drum beat" if self.drums else ""
        return f"a {pace} piece for {inst}{dr} in {self.key} at about {self.tempo} BPM"

    def meta(self) -> dict:
        return {"kind": "music", "tempo": self.tempo, "key": NOTE_NAMES[self.tonic], "mode": self.mode,
                "instruments": self.instruments, "drums": self.drums, "bars": self.bars,
                "families": [BY_NAME[i][2] for i in self.instruments], "n_notes": len(self.notes)}


def compose(rng: np.random.Generator, tempo: int | None = None, mode: str | None = None, lead: str | None = None,
            accompaniment: str | None | bool = True, drums: bool | None = None, bars: int | None = None) -> Piece:
    """Write a short piece: a chord progression, a scale-wise melody on the lead, block chords, optional drums."""
    tempo = int(tempo if tempo is not None else rng.integers(60, 171))
    mode = mode or ("major" if rng.random() < 0.5 else "minor")
    tonic = int(rng.integers(0, 12))
    lead = lead or INSTRUMENTS[int(rng.integers(len(INSTRUMENTS)))][1]
    if accompaniment is True:
        accompaniment = None if rng.random() < 0.4 else rng.choice(["piano", "string ensemble", "nylon guitar", "harp"])
        if accompaniment == lead:
            accompaniment = None
    elif accompaniment is False:
        accompaniment = None
    drums = bool(rng.random() < 0.5) if drums is None else drums
    beat = 60.0 / tempo
    bars = bars or max(2, min(8, int(round(8.0 / (4 * beat)))))  # ~8 s
    scale = MAJOR if mode == "major" else MINOR
    prog = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    base = 60 + tonic if tonic < 6 else 48 + tonic
    notes = []
    deg = 0
    for b in range(bars):
        root = prog[b % len(prog)]
        t0 = b * 4 * beat
        chord = [base - 12 + scale[(root + k) % 7] + 12 * ((root + k) // 7) for k in (0, 2, 4)]
        if accompaniment:
            for p in chord:
                notes.append((t0, t0 + 4 * beat * 0.95, 1, p, 70))
        # melody: eighths/quarters moving by step around the chord
        t = t0
        while t < t0 + 4 * beat - 1e-9:
            dur = beat * (0.5 if rng.random() < 0.5 else 1.0)
            deg = int(np.clip(deg + rng.integers(-2, 3), -2, 9))
            pitch = base + scale[deg % 7] + 12 * (deg // 7)
            notes.append((t, t + dur * 0.9, 0, pitch, int(rng.integers(80, 110))))
            t += dur
        if drums:
            for k in range(8):
                tt = t0 + k * beat / 2
                notes.append((tt, tt + 0.1, 9, 42, 60))          # closed hi-hat on eighths
                if k % 4 == 0:
                    notes.append((tt, tt + 0.1, 9, 36, 100))     # kick on 1 and 3
                if k % 4 == 2:
                    notes.append((tt, tt + 0.1, 9, 38, 95))      # snare on 2 and 4
    notes.sort()
    return Piece(tempo, tonic, mode, lead, accompaniment, drums, bars, int(rng.integers(1 << 30)), notes)


def to_midi(piece: Piece) -> bytes:
    """The piece as a Standard MIDI File (what the renderer plays)."""
    import mido

    tpb = 480
    mid = mido.MidiFile(ticks_per_beat=tpb, type=0)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(piece.tempo), time=0))
    tr.append(mido.MetaMessage("key_signature", key=NOTE_NAMES[piece.tonic].replace("Eb", "Eb") +
                               ("m" if piece.mode == "minor" else ""), time=0))
    tr.append(mido.Message("program_change", channel=0, program=BY_NAME[piece.lead][0], time=0))
    if piece.accompaniment:
        tr.append(mido.Message("program_change", channel=1, program=BY_NAME[piece.accompaniment][0], time=0))
    evs = []
    for s, e, ch, p, v in piece.notes:
        evs.append((s, 1, mido.Message("note_on", channel=ch, note=p, velocity=v)))
        evs.append((e, 0, mido.Message("note_off", channel=ch, note=p, velocity=0)))
    evs.sort(key=lambda x: (x[0], x[1]))
    sec_per_tick = 60.0 / piece.tempo / tpb
    last = 0
    for t, _, msg in evs:
        tick = int(round(t / sec_per_tick))
        tr.append(msg.copy(time=tick - last))
        last = tick
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


class MusicRenderer:
    """FluidSynth with a GM soundfont. A fresh synth per piece (voice and channel state otherwise leaks from one
    piece into the next); the soundfont's samples stay cached by one synth kept alive, so a fresh one does not reload them.
    Reverb and chorus are off, so a piece renders to the same samples every time."""

    def __init__(self, soundfont: str):
        if not os.path.isfile(soundfont):
            raise SourceError("missing source file", f"soundfont {soundfont}")
        self.soundfont = soundfont
        self._keep, self._keep_id = self._synth()  # keeps the sample cache warm

    def _synth(self):
        import fluidsynth

        # settings must be in place before the synth is created (pyfluidsynth passes kwargs to fluid_settings)
        fs = fluidsynth.Synth(samplerate=float(SR), **{"synth.reverb.active": 0, "synth.chorus.active": 0})
        sfid = fs.sfload(self.soundfont)
        if sfid < 0:
            raise SourceError("unreadable source file", f"soundfont {self.soundfont}")
        return fs, sfid

    @staticmethod
    def _float_samples(fs, n: int) -> np.ndarray:
        """Interleaved stereo float32 via fluid_synth_write_float: unlike the 16-bit path (pyfluidsynth's
        get_samples) it adds no dither, whose noise table depends on the process's C rand() state."""
        import ctypes

        import fluidsynth

        fn = fluidsynth._fl.fluid_synth_write_float
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        buf = np.zeros(2 * n, dtype=np.float32)
        ptr = buf.ctypes.data
        if fn(fs.synth, n, ptr, 0, 2, ptr, 1, 2) != 0:
            raise SourceError("music render failed", "fluid_synth_write_float failed")
        return buf

    def render(self, piece: Piece) -> np.ndarray:
        import mido

        mid = mido.MidiFile(file=io.BytesIO(to_midi(piece)))
        fs, sfid = self._synth()
        try:
            fs.program_select(9, sfid, 128, 0)
            chunks, now = [], 0.0
            for msg in mid:  # yields messages with .time in seconds
                if msg.time > 0:
                    n = int(round((now + msg.time) * SR)) - int(round(now * SR))
                    if n > 0:
                        chunks.append(self._float_samples(fs, n))
                    now += msg.time
                if msg.type == "program_change":
                    fs.program_select(msg.channel, sfid, 0, msg.program)
                elif msg.type == "note_on":
                    fs.noteon(msg.channel, msg.note, msg.velocity)
                elif msg.type == "note_off":
                    fs.noteoff(msg.channel, msg.note)
            chunks.append(self._float_samples(fs, int(1.0 * SR)))  # release tail
        finally:
            fs.delete()
        x = np.concatenate(chunks).reshape(-1, 2).mean(axis=1)
        x = trim(x, -50.0)
        if x.size == 0:
            raise SourceError("music render failed", f"silent render of {piece.describe()}")
        return normalize(x, -3.0)


def check_music(cfg) -> None:
    from .speech import EngineMissing

    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError) as exc:
        raise EngineMissing(f"music engine 'fluidsynth' unavailable ({exc}): install `pip install pyfluidsynth==1.4.0` "
                            "and `apt-get install libfluidsynth3` (scripts/setup_venv.sh)") from exc
    if not os.path.isfile(cfg.soundfont):
        raise EngineMissing(f"soundfont {cfg.soundfont} not found: install it with `apt-get install fluid-soundfont-gm`")
