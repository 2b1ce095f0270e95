"""Reward section: which reward components are on, their weights, the rule verifiers' options, and the judge."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..judge_prompts import PROMPTS
from .base import cfg_field

# The reward components (rewards/ registers one function per name). The total is sum_k weights[k] * score_k.
REWARD_COMPONENTS = ("correctness", "parsimony", "consistency", "format")
DEFAULT_WEIGHTS = {"correctness": 1.0, "parsimony": 0.2, "consistency": 0.1, "format": 0.1}


@dataclass
class JudgeConfig:
    """LLM-as-a-judge (§3.2.2): any OpenAI-compatible chat endpoint scoring 1–5."""

    base_url: str = cfg_field("", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1. Empty: no judge.")
    model: str = cfg_field("judge", "Model name sent to the judge endpoint (the paper: Qwen3-7B-Instruct).")
    api_key: str = cfg_field("EMPTY", "API key sent to the endpoint when api_key_env is unset (local servers ignore it).")
    api_key_env: str = cfg_field(
        "POLYAUDIO_API_KEY", "Environment variable holding the judge endpoint's bearer key (eval.serve --api-key); it "
        "wins over api_key when set. Name the variable here, never the key itself.")
    timeout_s: float = cfg_field(30.0, "Per-request timeout in seconds.")
    max_retries: int = cfg_field(3, "Bounded retries with exponential backoff before an item is marked unscored.")
    backoff_s: float = cfg_field(0.5, "First retry delay in seconds; doubles per retry (with ±25% jitter).")
    max_backoff_s: float = cfg_field(8.0, "Longest delay between two retries, in seconds.")
    concurrency: int = cfg_field(8, "Most judge requests in flight at once.")
    prompts: list[str] = cfg_field(
        ["rubric_a", "rubric_b"],
        "Judge prompts whose scores are averaged (§3.2.2: two paraphrased prompts); names from polyaudio_rl.core.judge_prompts.PROMPTS.",
    )
    structured_output: Literal["auto", "choice", "json_schema", "none"] = cfg_field(
        "auto",
        "How the 1–5 answer is constrained: 'choice' (vLLM extra body structured_outputs={'choice': [...]}), "
        "'json_schema' (OpenAI response_format), 'none' (free text, tolerant parsing), or 'auto' (choice; falls "
        "back to none when the endpoint rejects it with HTTP 400/422).",
    )
    max_tokens: int = cfg_field(16, "Most tokens the judge may generate per reply.")
    temperature: float = cfg_field(0.0, "Judge sampling temperature (0: greedy, reproducible).")
    cache_size: int = cfg_field(100_000, "Judge scores cached per (prompt, answer); 0 disables the cache.")
    show_relevant_clips: bool = cfg_field(
        True, "Tell the judge which clips the reference answer depends on (helps it grade clip parsimony)."
    )

    def validate(self) -> None:
        if not self.prompts:
            raise ValueError("judge.prompts must name at least one prompt")
        unknown = [p for p in self.prompts if p not in PROMPTS]
        if unknown:
            raise ValueError(f"judge.prompts: unknown prompt(s) {unknown}; known: {sorted(PROMPTS)}")
        if self.timeout_s <= 0 or self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("judge.timeout_s > 0, judge.concurrency >= 1 and judge.max_retries >= 0 are required")


@dataclass
class RewardConfig:
    """Weights of the reward components (paper §2.4: correctness, efficient clip usage, consistency)."""

    weights: dict[str, float] = cfg_field(
        dict(DEFAULT_WEIGHTS),
        "Weight per reward component (correctness, parsimony, consistency, format); the total is the weighted "
        "sum. 0 switches one off. Components left out keep their default weight.",
    )
    correctness_mode: Literal["rule", "judge", "both"] = cfg_field("rule", "'rule' (verifiers on exact ground truth), 'judge', or 'both' (mean).")
    num_actors: int = cfg_field(1, "Number of reward actors in the pool.")
    actor_num_cpus: float = cfg_field(0.5, "Logical CPUs each reward actor asks Ray for.")
    max_unscored_fraction: float = cfg_field(
        0.5, "Stop the run when more than this fraction of a batch cannot be scored (e.g. the judge is down)."
    )
    permutation_partial: bool = cfg_field(
        True, "Chronological ordering: partial credit max(0, Kendall tau) for a non-exact order (else exact only)."
    )
    interval_tolerance_s: float = cfg_field(
        0.05, "Temporal grounding: both ends within this many seconds of the key's count as exact (else IoU)."
    )
    clip_set_credit: Literal["exact", "recall"] = cfg_field(
        "exact", "Set-of-clips answers ('which clips contain a beep?'): 'exact' (1 only for the key's set) or "
        "'recall' (share of the key's clips named, whatever else is named: a judge that does not check parsimony; "
        "the starter ablation suite trains with it). Held-out accuracy is always exact.")
    caption_max_ratio: float = cfg_field(
        3.0, "Captions longer than this many times the reference (in words) get their keyword recall scaled down."
    )
    parsimony_scope: Literal["completion", "answer"] = cfg_field(
        "completion", "Where clip mentions are read for clip-parsimony: 'completion' (reasoning too) or 'answer'."
    )
    consistency_cross_weight: float = cfg_field(
        0.5, "Share of consistency from agreement with paraphrased questions on the same clips in the batch."
    )
    format_max_words: int = cfg_field(200, "Format check: an answer region longer than this many words fails.")
    judge: JudgeConfig = cfg_field(JudgeConfig(), "Judge endpoint settings.")

    def __post_init__(self) -> None:
        self.weights = {**DEFAULT_WEIGHTS, **dict(self.weights)}

    def validate(self) -> None:
        for k, w in self.weights.items():
            if k not in REWARD_COMPONENTS:
                raise ValueError(f"reward.weights.{k} is not a reward component ({', '.join(REWARD_COMPONENTS)})")
            if w < 0:
                raise ValueError(f"reward.weights.{k} must be >= 0, got {w}")
        if self.correctness_mode in ("judge", "both") and self.weights["correctness"] > 0 and not self.judge.base_url:
            raise ValueError(f"reward.correctness_mode={self.correctness_mode} needs reward.judge.base_url")
        if not 0.0 <= self.consistency_cross_weight <= 1.0:
            raise ValueError(f"reward.consistency_cross_weight must be in [0, 1], got {self.consistency_cross_weight}")
        if not 0.0 <= self.max_unscored_fraction <= 1.0:
            raise ValueError(f"reward.max_unscored_fraction must be in [0, 1], got {self.max_unscored_fraction}")
        if self.num_actors < 1:
            raise ValueError(f"reward.num_actors must be >= 1, got {self.num_actors}")
        self.judge.validate()

    def enabled(self) -> list[str]:
        """Components with a positive weight."""
        return [k for k in REWARD_COMPONENTS if self.weights.get(k, 0.0) > 0]
