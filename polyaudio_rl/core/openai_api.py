"""The one OpenAI-compatible client layer: client factory, retry policy, error text and the audio content builder.

Used by the judge (:mod:`rewards.judge`) and the evaluation clients (:mod:`eval.client`, :mod:`eval.mmau`); it lives
in the core because ``rewards`` and ``eval`` may not import each other's internals sideways.

- :func:`api_key_from_env` — the bearer key from the environment variable a config names (``POLYAUDIO_API_KEY``
  by default); a YAML file names the variable, never the key.
- :func:`make_client` — a configured ``openai.AsyncOpenAI`` (base URL, key, per-request timeout, the client's own
  ``max_retries``). Callers that need a retry policy the client does not have (retrying an unparseable judge reply,
  counting every retry in their stats, ``backoff_s`` from our config) pass ``max_retries=0`` and use
  :func:`retrying`.
- :func:`retrying` — a ``tenacity`` policy: at most ``max_retries + 1`` attempts, exponential backoff from
  ``backoff_s`` (doubling, capped at ``max_backoff_s``, ±25% jitter), retrying only what :func:`is_transient` says
  (connection errors, timeouts, HTTP 408/429/5xx, :class:`RetryableReply`); the last failure is re-raised as is.
- :func:`describe` / :func:`error_message` — one line for a failed call (``HTTP 503: <the server's message>``).
- :func:`audio_part` / :func:`build_content` — the user message content: one ``input_audio`` part (base64 16 kHz
  WAV) per audio, in order, then the text.
"""
from __future__ import annotations

import base64
import os
import random
from typing import Any, Callable, Sequence

import numpy as np
import openai
from openai import AsyncOpenAI
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from .audio import encode_wav

RETRY_STATUSES = (408, 429)  # plus every 5xx
DEFAULT_API_KEY_ENV = "POLYAUDIO_API_KEY"


def api_key_from_env(env_name: str = DEFAULT_API_KEY_ENV, default: str = "EMPTY") -> str:
    """The API key held by environment variable ``env_name`` (configs name the variable, never the key), else
    ``default``."""
    return (os.environ.get(env_name, "") if env_name else "") or default


class RetryableReply(Exception):
    """A reply that arrived but cannot be used (unparseable, malformed): worth another attempt."""


def make_client(base_url: str, api_key: str = "EMPTY", timeout_s: float = 60.0, max_retries: int = 0) -> AsyncOpenAI:
    """An ``AsyncOpenAI`` client for ``base_url``; ``max_retries`` are the client's own retries (0: the caller's)."""
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=max_retries)


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: connection error, timeout, HTTP 408/429/5xx, a :class:`RetryableReply`."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, (openai.APIConnectionError, RetryableReply))  # APITimeoutError is an APIConnectionError


def error_message(exc: openai.APIStatusError) -> str:
    """The server's own error message of an HTTP error reply (OpenAI ``{"error": {"message"}}`` shape), ≤ 500 chars."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    msg = err.get("message") if isinstance(err, dict) else None
    return str(msg or exc.message)[:500]


def describe(exc: BaseException, timeout_s: float | None = None) -> str:
    """One line saying why a call failed."""
    if isinstance(exc, openai.APITimeoutError):
        return f"timeout after {timeout_s:g} s" if timeout_s is not None else "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {error_message(exc)}"
    return str(exc)


def retrying(max_retries: int, backoff_s: float, max_backoff_s: float = 30.0,
             on_retry: Callable[[BaseException], None] | None = None,
             retry_on: Callable[[BaseException], bool] = is_transient) -> AsyncRetrying:
    """The retry policy: ``await retrying(...)(fn, *args)``; ``on_retry(exc)`` runs before each backoff sleep."""
    exp = wait_exponential(multiplier=backoff_s, max=max_backoff_s)

    def wait(state: RetryCallState) -> float:
        return exp(state) * random.uniform(0.75, 1.25)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.outcome.exception())

    return AsyncRetrying(stop=stop_after_attempt(max_retries + 1), wait=wait, retry=retry_if_exception(retry_on),
                         before_sleep=before_sleep, reraise=True)


def audio_part(wave: np.ndarray) -> dict[str, Any]:
    """An ``input_audio`` content part: the 16 kHz mono wave as base64 WAV."""
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(encode_wav(wave)).decode("ascii"), "format": "wav"}}


def build_content(audios: Sequence[np.ndarray], text: str) -> list[dict[str, Any]]:
    """User message content: one audio part per wave, in order, then the text."""
    return [*(audio_part(a) for a in audios), {"type": "text", "text": text}]
