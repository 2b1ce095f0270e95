"""Learner section: DeepSpeed workers under Ray Train."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import cfg_field


@dataclass
class LearnerConfig:
    """DeepSpeed learner workers (Ray Train). gloo/fp32 on CPU, NCCL/bf16 on GPUs."""

    num_workers: int = cfg_field(1, "Learner workers (data-parallel ranks).")
    use_gpu: bool = cfg_field(False, "Place learners on GPUs (one each).")
    cpus_per_worker: float = cfg_field(1.0, "Logical CPUs per learner worker.")
    zero_stage: int = cfg_field(2, "DeepSpeed ZeRO stage (2 or 3).")
    micro_batch_size: int = cfg_field(4, "Sequences per forward/backward on one worker.")
    grad_clip: float = cfg_field(1.0, "Global gradient-norm clip.")
    weight_decay: float = cfg_field(0.0, "AdamW weight decay.")
    warmup_steps: int = cfg_field(0, "Linear LR warm-up steps.")
    torch_threads: int = cfg_field(0, "torch intra-op threads per worker (0: int(cpus_per_worker), at least 1).")
    backend: Literal["auto", "gloo", "nccl"] = cfg_field("auto", "torch.distributed backend: auto (gloo on CPU, nccl on GPUs), gloo or nccl.")
    cache_audio_embeddings: bool = cfg_field(
        True, "Run the (frozen) audio encoder once per prompt per step and reuse its embeddings for all G completions, "
        "the reference pass and the μ inner epochs. Ignored when model.freeze_audio_encoder is false."
    )
    share_prompts: bool = cfg_field(
        True, "Run each prompt once per micro-batch for all its completions there: one packed row [prompt, "
        "completion 1, completion 2, ...] with a block mask (polyaudio_rl/core/packing.py; the idea of prefix "
        "sharing in RL trainers, e.g. Prefix Grouper, 2025). Same log-probs and gradients to float rounding; the "
        "prompt (mostly audio) is most of a GRPO sequence. Needs SDPA or eager attention (a 4D mask)."
    )
    prompt_cache_mb: float = cfg_field(
        1024.0, "Per-worker budget (MB) for encoded prompts — processor features and, with the cache above, the frozen "
        "encoder's embeddings — kept across steps by content (polyaudio_rl/core/prompt_cache.py): the driver has a "
        "batch's prompts prepared while its rollouts generate, and a prompt met again in a later epoch is not "
        "re-encoded. 0 disables it. Not used under ZeRO-3 (there the encoder pass is a collective of the step)."
    )
    max_restarts: int = cfg_field(
        2, "Times the driver rebuilds a learner group whose worker died, from the last GRPO checkpoint (its data "
        "position included), before failing the run."
    )
    cpu_affinity: list[int] = cfg_field(
        [], "CPU cores the learner workers' processes are pinned to (os.sched_setaffinity; empty: no pinning). "
        "Used by benchmarks/pipeline.py to keep rollouts and training on disjoint cores."
    )
    checkpoint_every: int = cfg_field(10, "Write a checkpoint every K optimizer steps (0: only at the end).")

    @property
    def uses_prompt_cache(self) -> bool:
        """Whether the workers keep a prompt cache (``prompt_cache_mb`` > 0, ZeRO stage below 3)."""
        return self.prompt_cache_mb > 0 and self.zero_stage < 3

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"learner.zero_stage must be 0–3, got {self.zero_stage}")
        if self.num_workers < 1 or self.micro_batch_size < 1:
            raise ValueError(f"learner.num_workers and micro_batch_size must be >= 1, got {self.num_workers}, "
                             f"{self.micro_batch_size}")
        if self.prompt_cache_mb < 0:
            raise ValueError(f"learner.prompt_cache_mb must be >= 0, got {self.prompt_cache_mb}")
