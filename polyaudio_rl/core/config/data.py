"""Data section: where samples come from and the multi-audio prompt limits."""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class DataConfig:
    """Multi-audio samples (Parquet shards from `datagen`) and the prompt builder's limits."""

    train_dir: str = cfg_field("artifacts/data/train", "Directory of the SFT split's Parquet shards (PolyAudio-Train).")
    pref_dir: str = cfg_field("artifacts/data/pref", "Directory of the GRPO split's Parquet shards (PolyAudio-Pref).")
    bench_dir: str = cfg_field("artifacts/data/bench", "Directory of the benchmark split (PolyAudio-Bench).")
    build_if_missing: bool = cfg_field(True, "Build the splits with `datagen` when a directory is missing.")
    seed: int = cfg_field(
        0, "Seed datagen builds a missing split with. Apart from the run's `seed` so that runs of different seeds "
        "train and are evaluated on the same data (the per-seed tables in docs/demo.md and docs/ablations.md).")
    preset: str = cfg_field("ci", "datagen preset used when building: ci, small or paper (paper: 110k/50k/2,750).")
    tasks: list[str] = cfg_field([], "Task names to keep (empty: all eleven tasks of Table 2).")
    sample_rate: int = cfg_field(16000, "Sample rate fed to the processor; every supported family's audio front end takes 16 kHz.")
    min_clips: int = cfg_field(2, "Fewest clips per prompt. The paper uses 2–5 (§3).")
    max_clips: int = cfg_field(5, "Most clips per prompt. The paper uses 2–5 (§3); also vLLM `limit_mm_per_prompt`.")
    max_clip_seconds: float = cfg_field(
        30.0, "Longest clip in seconds. Whisper-style front ends pad/truncate to a 30 s window; longer clips are rejected."
    )
    answer_tag: bool = cfg_field(
        False, "Ask for the final answer inside <answer>…</answer> (eases rule verification); the paper does not."
    )
    system_prompt: str = cfg_field(
        "You are a helpful assistant.", "System message of the chat template (the instruct checkpoints' default)."
    )
    interleave_tasks: bool = cfg_field(
        False, "Order each epoch task by task in turn (each task's rows in their seeded order), so every GRPO batch "
        "holds the tasks in equal shares instead of whatever a shuffle gives; still seeded and exactly resumable. "
        "Default false (a seeded shuffle over all rows).")
    balance_answers: bool = cfg_field(
        False, "With interleave_tasks: within each task the rows also take turns by reference answer (e.g. 'Clip 1.', "
        "'Clip 2.', 'Clip 3.'), so a GRPO batch's items of a task differ in answer while more than one answer is left "
        "in the epoch and a constant answer does not win a step (stratified sampling). Default false (its effect on "
        "configs/demo.yaml: docs/demo.md, 'What moved it').")
    prefetch_items: int = cfg_field(
        64, "Prompts the stream decodes ahead in a background thread (across epoch boundaries), so the GRPO driver "
        "never waits for Ray Data; 0 decodes on demand. Memory: up to this many decoded prompts (16 kHz clips)."
    )
    replay_cache_mb: int = cfg_field(
        1024, "A split whose decoded prompts fit in this many MB is decoded by Ray Data once; later epochs replay the "
        "decoded rows from the driver's memory in their own seeded order (the same items, positions and bad rows as a "
        "new pipeline would give) instead of starting a new Ray Data pipeline, whose start costs seconds of CPU "
        "(most of an epoch on a small split, nothing on a paper-scale one). Over the budget the cache is dropped and "
        "every epoch streams. 0: every epoch streams."
    )
    shuffle_seed: int = cfg_field(0, "Seed for the order in which the pref split is streamed.")

    def validate(self) -> None:
        if not 1 <= self.min_clips <= self.max_clips:
            raise ValueError(f"need 1 <= data.min_clips <= data.max_clips, got {self.min_clips}, {self.max_clips}")
        if not 0 < self.max_clip_seconds <= 30.0:
            raise ValueError(f"data.max_clip_seconds must be in (0, 30], got {self.max_clip_seconds}")
        if self.sample_rate != 16000:
            raise ValueError(f"data.sample_rate must be 16000 (the audio front end's rate), got {self.sample_rate}")
        if self.replay_cache_mb < 0:
            raise ValueError(f"data.replay_cache_mb must be >= 0 (0: no replay), got {self.replay_cache_mb}")
        if self.balance_answers and not self.interleave_tasks:
            raise ValueError("data.balance_answers needs data.interleave_tasks: true (answers take turns within a task)")
