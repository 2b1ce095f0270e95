"""Rewards for GRPO on multi-audio QA: correctness, clip-parsimony, consistency, format.

Read top-down:

- :mod:`rewards.registry`   — :class:`RewardResult`, the registry of reward components, sample checks.
- :mod:`rewards.extract`    — the answer region of a completion, numbers in words/digits, normalisation.
- :mod:`rewards.cliprefs`   — which clips a text refers to ("Audio 3", "the first and last clips").
- :mod:`rewards.verifiers`  — rule correctness, one verifier per ground-truth key type (+ task overrides).
- :mod:`rewards.parsimony`, :mod:`rewards.format`, :mod:`rewards.consistency` — the other components.
- :mod:`rewards.judge`      — async LLM-as-a-judge client (OpenAI-compatible, paper §3.2.2 rubric).
- :mod:`rewards.scorer`     — weights the components into a total for a batch of groups.
- :mod:`rewards.actor`      — Ray reward actors: a pool that scores a batch of groups concurrently.
"""
from .registry import RewardError, RewardResult, check_sample, get_reward, list_rewards, register_reward

__all__ = ["RewardError", "RewardResult", "check_sample", "get_reward", "list_rewards", "register_reward"]
