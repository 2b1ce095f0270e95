"""The policy endpoint client shared by PolyAudio-Bench (:mod:`eval.bench`) and MMAU (:mod:`eval.mmau`).

- :func:`resolve_model` — which model name to send to an endpoint;
- :func:`question_content` — the user message of one item: its clips (joined per the baseline protocol of
  :mod:`eval.baselines`) as ``input_audio`` parts, then the question with its choices rendered as in training;
- :class:`PolicyClient` — ``answer(content)`` with the retry policy of :mod:`polyaudio_rl.core.openai_api`:
  ``eval.max_retries`` retries with backoff on connection errors, timeouts, HTTP 408/429/5xx and malformed replies;
  another 4xx fails at once. A call that fails for good raises :class:`EndpointError` saying why.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import openai

from polyaudio_rl.core.config import EvalConfig
from polyaudio_rl.core.openai_api import RetryableReply, build_content, describe, is_transient, make_client, retrying
from polyaudio_rl.core.prompts import render_question

from .baselines import apply_protocol, protocol_hint


class EndpointError(RuntimeError):
    """A call that failed for good (after retries, or a non-retryable 4xx); the message says why."""


async def resolve_model(base_url: str, wanted: str | None, default: str, api_key: str = "EMPTY") -> str:
    """The model name to send: ``wanted``, else the endpoint's only model, else ``default`` if it is listed."""
    if wanted:
        return wanted
    async with make_client(base_url, api_key, timeout_s=30, max_retries=2) as client:
        ids = [m.id async for m in client.models.list()]
    if len(ids) == 1:
        return ids[0]
    if default in ids:
        return default
    raise EndpointError(f"{base_url}: serves {ids}; say which with --policy-model/--judge-model")


def question_content(waves: Sequence[np.ndarray], question: str, choices: Sequence[str] | None, cfg: EvalConfig,
                     protocol: str) -> tuple[list[dict[str, Any]], str]:
    """(user message content, rendered question): the clips per ``protocol`` (with its hint), then the question."""
    audios = apply_protocol(list(waves), protocol, cfg.silence_s)
    rendered = render_question(question, choices, cfg.answer_tag)
    hint = protocol_hint(len(waves), protocol, cfg.silence_s) if cfg.protocol_hint else ""
    return build_content(audios, f"{hint}\n{rendered}" if hint else rendered), rendered


class PolicyClient:
    """Chat completions against the policy endpoint with bounded retries and backoff (``eval.*`` settings)."""

    def __init__(self, base_url: str, model: str, cfg: EvalConfig, api_key: str = "EMPTY"):
        self.base_url, self.model, self.cfg = base_url, model, cfg
        self.client = make_client(base_url, api_key, timeout_s=cfg.timeout_s)
        self.retries = 0

    def _count_retry(self, _exc: BaseException) -> None:
        self.retries += 1

    async def _once(self, content: list[dict[str, Any]], attempts: list[int]) -> str:
        attempts[0] += 1
        resp = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}],
            max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature)
        try:
            text = resp.choices[0].message.content
        except (IndexError, AttributeError) as exc:
            raise RetryableReply(f"malformed response: {exc}") from exc
        if text is None:
            raise EndpointError("the reply has no message content")
        return text

    async def answer(self, content: list[dict[str, Any]]) -> tuple[str, int]:
        """(answer text, attempts used)."""
        attempts = [0]
        policy = retrying(self.cfg.max_retries, self.cfg.backoff_s, on_retry=self._count_retry)
        try:
            return await policy(self._once, content, attempts), attempts[0]
        except (openai.APIError, RetryableReply) as exc:
            why = describe(exc, self.cfg.timeout_s)
            if is_transient(exc):
                raise EndpointError(f"gave up after {attempts[0]} attempts: {why}") from None
            raise EndpointError(why) from None

    async def aclose(self) -> None:
        await self.client.close()
