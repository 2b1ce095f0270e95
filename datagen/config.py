"""Datagen section: preset sizes, audio engines, seeds, parallelism, optional corpora and LLM authoring.

``DataConfig`` (polyaudio_rl/core/config/data.py) says *where* the splits live and which preset to build;
this dataclass says *how* `python -m datagen build` makes them. Build it from a YAML mapping with
``polyaudio_rl.core.config.base.build(DatagenConfig, mapping)`` (unknown key => error naming the key).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from polyaudio_rl.core.config.base import cfg_field

from polyaudio_rl.core.schema import SPLITS, TASKS

# Items per task for each (preset, split). Paper (§3, §4.1.1): 110,000 train (SFT), 50,000 pref (GRPO prompts),
# 2,750 bench = 250 per task. 110,000 / 11 = 10,000 per task; 50,000 / 11 = 4,545.45 -> 4,546 (50,006 items).
PRESETS: dict[str, dict[str, int]] = {
    "ci": {"train": 4, "pref": 4, "bench": 4},
    "small": {"train": 200, "pref": 100, "bench": 40},
    "paper": {"train": 10_000, "pref": 4_546, "bench": 250},
    # the starter curriculum (tasks/starter.py) that the tiny random model learns in minutes: `make demo`
    "starter": {"train": 64, "pref": 96, "bench": 32},
    # one set-of-clips task in paraphrase families (tasks/starter_ablation.py): `make ablate`
    "starter_ablation": {"train": 160, "pref": 96, "bench": 256},
}
CURRICULA = ("paper", "starter", "starter_ablation")

SPEECH_ENGINES = ("espeak-ng", "flite", "openai")
EVENT_SOURCES = ("freedesktop", "yaru", "oxygen", "hydrogen", "bucklespring")
CORPORA = ("audioset", "picoaudio", "librispeech", "musiccaps", "music4all", "clotho", "audiocaps")


@dataclass
class OpenAITTSConfig:
    """An OpenAI-compatible `/v1/audio/speech` backend (the production speech path; the paper's voices)."""

    base_url: str = cfg_field("", "Base URL, e.g. http://127.0.0.1:8000/v1 (empty: backend unused).")
    model: str = cfg_field("gpt-4o-mini-tts", "TTS model name sent in the request.")
    api_key_env: str = cfg_field("OPENAI_API_KEY", "Environment variable holding the API key ('none' if unset).")
    voices: list[str] = cfg_field(
        ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"],
        "Voice names (the paper's speaker whitelist, Figure 7).",
    )
    timeout_s: float = cfg_field(60.0, "Per-request timeout in seconds.")


@dataclass
class LLMAuthorConfig:
    """Optional LLM authoring of scripts and QAs with the paper's prompts (Figures 2-10) and checks."""

    enabled: bool = cfg_field(False, "Author entailment/factual-consistency items with an LLM (default: templates).")
    base_url: str = cfg_field("", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str = cfg_field("gpt-oss-120b", "Chat model name (the paper used GPT-5 and GPT-OSS-120B, §3.2.1).")
    api_key_env: str = cfg_field("OPENAI_API_KEY", "Environment variable holding the API key ('none' if unset).")
    max_retries: int = cfg_field(3, "Attempts per item before the reply is rejected, skipped and counted.")
    temperature: float = cfg_field(0.9, "Sampling temperature for authoring.")
    tasks: list[str] = cfg_field(["entailment", "factual_consistency"], "Tasks authored by the LLM when enabled.")
    timeout_s: float = cfg_field(120.0, "Per-request timeout in seconds.")


@dataclass
class DatagenConfig:
    """How `python -m datagen build` produces PolyAudio-Train/Pref/Bench."""

    preset: str = cfg_field("ci", f"Size preset: one of {sorted(PRESETS)} (paper: 110k/50k/2,750; Section 3).")
    items_per_task: dict[str, int] = cfg_field({}, "Override items per task for a split, e.g. {bench: 10}.")
    tasks: list[str] = cfg_field([], "Tasks to build (empty: all eleven of Table 2).")
    curriculum: str = cfg_field(
        "paper",
        "'paper': the eleven tasks of Table 2 (every production config). 'starter': exact-key signal variants of "
        "odd_one_out (noise among tones), entailment (is one clip noise?) and counting (beeps over clips) that the random "
        "tiny model learns on two cores (datagen/tasks/starter.py); preset 'starter' implies it. 'starter_ablation': 'which "
        "clips contain a beep?' in paraphrase families, for the reward ablations (datagen/tasks/starter_ablation.py); "
        "preset 'starter_ablation' implies it.",
    )
    seed: int = cfg_field(0, "Global seed. Same seed and config => the same content, byte for byte.")
    odd_one_out_variant: str = cfg_field(
        "mixed",
        "odd_one_out generator: 'mixed' (60% kind: speech/music/percussion/alert/keyboard, 40% instrument family), "
        "'kind', 'family', or 'signal' — an easy curriculum (steady tones vs one noise clip, 0.5–1.5 s, short "
        "answers) used by the learning test; not part of the paper's data.",
    )
    min_clips: int = cfg_field(2, "Fewest clips per item (paper: 2-5, Section 3). Counts cycle min..max (balanced).")
    max_clips: int = cfg_field(5, "Most clips per item (paper: 2-5).")
    max_clip_seconds: float = cfg_field(30.0, "Longest clip (a Whisper-style front end's 30 s window). Longer => item rejected.")
    sample_rate: int = cfg_field(16000, "Output sample rate (the audio front end's rate: 16 kHz mono).")
    audio_format: str = cfg_field("flac", "Clip encoding in the shards: flac (small, lossless) or wav.")
    speech_engines: list[str] = cfg_field(
        ["espeak-ng", "flite"], f"Speech engines used for speakers: any of {list(SPEECH_ENGINES)}."
    )
    espeak_binary: str = cfg_field("espeak-ng", "espeak-ng executable (Debian package espeak-ng).")
    flite_binary: str = cfg_field("flite", "flite executable (Debian package flite).")
    openai_tts: OpenAITTSConfig = field(default_factory=OpenAITTSConfig, metadata={"help": "OpenAI-compatible TTS."})
    event_sources: list[str] = cfg_field(
        list(EVENT_SOURCES), f"Recorded-sound packages used for sound events: any of {list(EVENT_SOURCES)}."
    )
    soundfont: str = cfg_field(
        "/usr/share/sounds/sf2/FluidR3_GM.sf2", "General MIDI soundfont for music (Debian fluid-soundfont-gm)."
    )
    bench_holdout: float = cfg_field(
        0.25, "Fraction of speakers, lexicon entries and sound files reserved for bench (disjoint from train/pref)."
    )
    corpora: dict[str, str] = cfg_field(
        {}, f"Manifests (CSV/JSONL) of real corpora on disk, by corpus: keys from {list(CORPORA)}."
    )
    corpus_fraction: float = cfg_field(0.5, "Share of captioning items drawn from configured corpora.")
    llm: LLMAuthorConfig = field(default_factory=LLMAuthorConfig, metadata={"help": "Optional LLM authoring."})
    workers: int = cfg_field(0, "Worker processes (0: os.cpu_count()).")
    shard_items: int = cfg_field(256, "Items per Parquet shard.")
    max_attempts: int = cfg_field(3, "Attempts (fresh sub-seeds) per item before it is skipped and counted.")

    def validate(self) -> None:
        if self.odd_one_out_variant not in ("mixed", "kind", "family", "signal"):
            raise ValueError(f"datagen.odd_one_out_variant must be mixed, kind, family or signal, "
                             f"got {self.odd_one_out_variant!r}")
        if self.curriculum not in CURRICULA:
            raise ValueError(f"datagen.curriculum must be one of {list(CURRICULA)}, got {self.curriculum!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"datagen.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"datagen.tasks: unknown task {t!r} (known: {', '.join(TASKS)})")
        for s in self.items_per_task:
            if s not in SPLITS:
                raise ValueError(f"datagen.items_per_task: unknown split {s!r}")
        if not 1 <= self.min_clips <= self.max_clips <= 5:
            raise ValueError(f"need 1 <= datagen.min_clips <= datagen.max_clips <= 5, got {self.min_clips}, {self.max_clips}")
        if not 0 < self.max_clip_seconds <= 30.0:
            raise ValueError(f"datagen.max_clip_seconds must be in (0, 30], got {self.max_clip_seconds}")
        if self.sample_rate != 16000:
            raise ValueError(f"datagen.sample_rate must be 16000 (the audio front end's rate), got {self.sample_rate}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"datagen.audio_format must be flac or wav, got {self.audio_format!r}")
        for e in self.speech_engines:
            if e not in SPEECH_ENGINES:
                raise ValueError(f"datagen.speech_engines: unknown engine {e!r} (known: {list(SPEECH_ENGINES)})")
        if not self.speech_engines:
            raise ValueError("datagen.speech_engines is empty: need at least one speech engine")
        for e in self.event_sources:
            if e not in EVENT_SOURCES:
                raise ValueError(f"datagen.event_sources: unknown source {e!r} (known: {list(EVENT_SOURCES)})")
        for c in self.corpora:
            if c not in CORPORA:
                raise ValueError(f"datagen.corpora: unknown corpus {c!r} (known: {list(CORPORA)})")
        if not 0 < self.bench_holdout < 1:
            raise ValueError(f"datagen.bench_holdout must be in (0, 1), got {self.bench_holdout}")
        if self.shard_items < 1 or self.max_attempts < 1:
            raise ValueError("datagen.shard_items and datagen.max_attempts must be >= 1")

    def n_items(self, split: str) -> int:
        """Items per task for ``split`` under this preset (after overrides)."""
        return int(self.items_per_task.get(split, PRESETS[self.preset][split]))

    def is_starter(self) -> bool:
        return self.curriculum == "starter" or self.preset == "starter"

    def task_list(self) -> list[str]:
        if self.tasks:
            return list(self.tasks)
        if self.curriculum == "starter_ablation" or self.preset == "starter_ablation":
            from .tasks.starter_ablation import STARTER_ABLATION_TASKS

            return list(STARTER_ABLATION_TASKS)
        if self.is_starter():
            from .tasks.starter import STARTER_TASKS

            return list(STARTER_TASKS)
        return list(TASKS)
