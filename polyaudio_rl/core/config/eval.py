"""Eval section: PolyAudio-Bench, MMAU-Pro and MMAU evaluation (``python -m eval.bench`` / ``eval.mmau``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .base import cfg_field

Protocol = Literal["native", "concat", "pair"]
PROTOCOLS = get_args(Protocol)


@dataclass
class EvalConfig:
    """Evaluation protocol (§3.2.2, §4.1)."""

    api_key_env: str = cfg_field(
        "POLYAUDIO_API_KEY", "Environment variable holding the bearer key of the policy endpoint (eval.serve --api-key); "
        "unset or empty: no key. Name the variable here, never the key itself.")
    max_items: int = cfg_field(0, "Evaluate at most this many items (0: all).")
    concurrency: int = cfg_field(4, "Requests in flight against the policy endpoint.")
    max_new_tokens: int = cfg_field(64, "Most tokens generated per answer.")
    temperature: float = cfg_field(0.0, "Policy sampling temperature at evaluation (0: greedy, reproducible).")
    timeout_s: float = cfg_field(300.0, "Per-request timeout of a policy call, in seconds.")
    max_retries: int = cfg_field(
        3, "Retries of a policy call on connection errors, timeouts, HTTP 408/429/5xx; then the item is reported "
        "failed (never scored 0). Other 4xx fail at once.")
    backoff_s: float = cfg_field(1.0, "First retry delay in seconds; doubles per retry (with ±25% jitter).")
    baseline_protocol: Protocol = cfg_field(
        "native", "How clips reach the model (§4.1.2): 'native' (one audio part per clip), 'concat' (all clips joined "
        "into one audio with silence between, for single-audio models), 'pair' (2-audio models: clip 1, then clips "
        "2..n joined with silence as the last audio).")
    silence_s: float = cfg_field(2.0, "Silence between joined clips in 'concat'/'pair' (§4.1.2: 2 s).")
    protocol_hint: bool = cfg_field(
        True, "With 'concat'/'pair', add one sentence to the question saying how the clips were joined (the numbering "
        "'Audio i' of the question no longer matches audio parts otherwise).")
    serve_bench: bool = cfg_field(
        False, "After GRPO, serve the trained adapter with eval.serve (Ray Serve, OpenAI-compatible) on the run's Ray "
        "cluster and run eval.bench on the bench split against it (RUN_DIR/bench/). `make demo` turns it on.")
    serve_bench_judge: str = cfg_field(
        "", "Judge checkpoint served for that bench (a chat model; the paper: Qwen3-7B-Instruct). Empty: the policy's "
        "base checkpoint (on the embedded default the tiny random model: its scores are labelled as meaningless).")
    answer_tag: bool = cfg_field(
        False, "Ask for the final answer inside <answer></answer> (match the policy's training prompt, data.answer_tag).")
    mmau_match: Literal["string", "embedding"] = cfg_field(
        "string", "MMAU-Pro choice matching: 'string' (option letter / choice text / MMAU token match) or 'embedding' "
        "(cosine similarity via an OpenAI-compatible /v1/embeddings endpoint, as the official script with NV-Embed-v2).")
    embed_url: str = cfg_field("", "OpenAI-compatible base URL of the embeddings endpoint (mmau_match=embedding).")
    embed_model: str = cfg_field("nvidia/NV-Embed-v2", "Embedding model name sent to embed_url (official: NV-Embed-v2).")

    def validate(self) -> None:
        if self.mmau_match == "embedding" and not self.embed_url:
            raise ValueError("eval.mmau_match=embedding needs eval.embed_url")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.silence_s < 0:
            raise ValueError("eval.concurrency >= 1, eval.max_retries >= 0, eval.timeout_s > 0, eval.silence_s >= 0")
