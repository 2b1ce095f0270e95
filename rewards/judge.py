"""LLM-as-a-judge client (paper §3.2.2) for any OpenAI-compatible chat endpoint.

For each item the judge gets (i) the question, (ii) the ground-truth answer and (iii) the model's answer, with a
rubric asking for one score in [1, 5] on two criteria: factual correctness with respect to the clips, and
parsimony of clip usage. The score is the mean over the paraphrased prompts in ``judge.prompts`` (two by default,
as in the paper); :attr:`JudgeResult.normalized` maps it to [0, 1] as (score − 1) / 4.

Robustness:

- structured output: ``choice`` sends vLLM's ``structured_outputs={"choice": ["1", …, "5"]}`` extra body,
  ``json_schema`` sends an OpenAI ``response_format`` JSON schema ``{"score": 1..5}``; ``auto`` tries ``choice``
  and, when the endpoint rejects it (HTTP 400/422), falls back to free text for the rest of the session;
- free text is parsed tolerantly (:func:`parse_score`: "4", "Score: 4/5", "**4** out of 5", ``{"score": 4}``),
  out-of-range or ambiguous numbers are rejected, never clipped;
- a per-request timeout, bounded retries with exponential backoff and jitter (connection errors, timeouts, HTTP
  408/429/5xx, unparseable replies), a semaphore bounding the requests in flight, and an LRU cache
  (``cachetools.LRUCache``) keyed by the rendered prompt (question, reference, answer) and model;
- an item whose prompts cannot all be scored is *unscored* (``score=None``, ``error`` says why) and counted in
  :class:`JudgeStats` — never a silent 0.

The client, the retry policy (``tenacity``: the ``openai`` client's own retries would neither retry an unparseable
reply nor let every attempt be counted) and the error text are :mod:`polyaudio_rl.core.openai_api`'s.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import openai
from cachetools import LRUCache
from openai import AsyncOpenAI

from polyaudio_rl.core.config.reward import JudgeConfig
from polyaudio_rl.core.judge_prompts import PROMPTS
from polyaudio_rl.core.openai_api import (RetryableReply, api_key_from_env, describe, is_transient, make_client,
                                          retrying)

from .extract import find_numbers

SCORE_CHOICES = ["1", "2", "3", "4", "5"]
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "judge_score",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["score"],
            "additionalProperties": False,
        },
    },
}

_JSON_OBJ = re.compile(r"\{[^{}]*\}")
_SCORE_LABEL = re.compile(r"\b(?:score|rating|grade)\b\s*(?:is|of|:|=)?\s*[*_\"'(\[]*\s*(-?\d+(?:\.\d+)?)", re.I)
_OUT_OF = re.compile(r"(-?\d+(?:\.\d+)?)\s*[*_]*\s*(?:/|out\s+of)\s*(\d+)", re.I)


def parse_score(text: object) -> tuple[float | None, str]:
    """The 1–5 score in a judge reply, or (None, why). Tolerates chatter; rejects out-of-range and ambiguity."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty reply"
    t = text.strip()
    value: float | None = None
    for m in _JSON_OBJ.finditer(t):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)) and not isinstance(obj["score"], bool):
            value = float(obj["score"])
            break
    if value is None:
        m = _SCORE_LABEL.search(t)
        if m:
            value = float(m.group(1))
    if value is None:
        m = _OUT_OF.search(t)
        if m:
            if m.group(2) != "5":
                return None, f"score on a different scale: {m.group(0)!r}"
            value = float(m.group(1))
    if value is None:
        distinct = sorted({n.value for n in find_numbers(t)})
        if len(distinct) == 1:
            value = distinct[0]
        elif len(distinct) > 1:
            return None, f"ambiguous: several numbers {distinct[:6]}"
        else:
            return None, "no number"
    if not 1.0 <= value <= 5.0:
        return None, f"out of range: {value:g}"
    return value, ""


class _BadReply(RetryableReply):
    """The reply holds no valid 1–5 score."""


class _Malformed(RetryableReply):
    """The reply is not a chat completion."""


@dataclass
class JudgeResult:
    """Mean 1–5 score over the judge prompts, or None when the item is unscored (``error`` says why)."""

    score: float | None
    per_prompt: dict[str, float | None] = field(default_factory=dict)
    error: str = ""
    cached: int = 0

    @property
    def normalized(self) -> float | None:
        return None if self.score is None else (self.score - 1.0) / 4.0


@dataclass
class JudgeStats:
    requests: int = 0
    retries: int = 0
    failures: int = 0  # prompts that gave no score after all retries
    cache_hits: int = 0
    unscored_items: int = 0
    structured_fallbacks: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


class JudgeClient:
    """Async judge client; one instance per process (it keeps the cache and one HTTP client per event loop)."""

    def __init__(self, cfg: JudgeConfig):
        if not cfg.base_url:
            raise ValueError("reward.judge.base_url is empty: set it to an OpenAI-compatible endpoint (…/v1)")
        unknown = [p for p in cfg.prompts if p not in PROMPTS]
        if unknown:
            raise ValueError(f"reward.judge.prompts: unknown prompt(s) {unknown}; known: {sorted(PROMPTS)}")
        self.cfg = cfg
        self.stats = JudgeStats()
        self._cache: LRUCache[str, float] | None = LRUCache(cfg.cache_size) if cfg.cache_size > 0 else None
        self._structured = cfg.structured_output if cfg.structured_output != "auto" else "choice"
        self._loop_state: tuple[Any, AsyncOpenAI, asyncio.Semaphore] | None = None
        self._outage: tuple[float, socket.socket, AsyncOpenAI | None] | None = None

    # -- fault injection (faults.judge_outage_at_step) -------------------------------------------------
    def start_outage(self, seconds: float) -> None:
        """For ``seconds`` from now every request goes to a closed local port (bound, never listening): the
        connection is refused and the normal retry policy runs, as when the judge endpoint goes away."""
        self.end_outage()
        closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        closed.bind(("127.0.0.1", 0))  # reserved so nothing else can listen there; connect() gets ECONNREFUSED
        self._outage = (time.monotonic() + seconds, closed, None)

    def end_outage(self) -> None:
        if self._outage is not None:
            self._outage[1].close()
            self._outage = None

    def _outage_client(self) -> AsyncOpenAI | None:
        if self._outage is None:
            return None
        until, closed, client = self._outage
        if time.monotonic() >= until:
            self.end_outage()
            return None
        if client is None:
            client = make_client(f"http://127.0.0.1:{closed.getsockname()[1]}/v1", "outage", self.cfg.timeout_s)
            self._outage = (until, closed, client)
        return client

    # -- plumbing ---------------------------------------------------------------------------------------
    def _client(self) -> tuple[AsyncOpenAI, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop_state is None or self._loop_state[0] is not loop:
            client = make_client(self.cfg.base_url, api_key_from_env(self.cfg.api_key_env, self.cfg.api_key),
                                 self.cfg.timeout_s)
            self._loop_state = (loop, client, asyncio.Semaphore(self.cfg.concurrency))
        return self._loop_state[1], self._loop_state[2]

    async def aclose(self) -> None:
        if self._loop_state is not None:
            await self._loop_state[1].close()
            self._loop_state = None

    def render(self, prompt: str, question: str, reference: str, answer: str, n_clips: int,
               relevant_clips: Sequence[int] = ()) -> list[dict[str, str]]:
        system, user = PROMPTS[prompt]
        relevant = ""
        if self.cfg.show_relevant_clips and relevant_clips:
            relevant = "Clips the reference answer depends on: " + ", ".join(f"Audio {i}" for i in relevant_clips) + "\n"
            if prompt == "rubric_b":
                relevant = "[Relevant recordings]\n" + ", ".join(f"Audio {i}" for i in relevant_clips) + "\n\n"
        text = user.format(question=question.strip(), reference=reference.strip(), answer=answer.strip() or "(empty)",
                           n_clips=n_clips, relevant=relevant)
        return [{"role": "system", "content": system}, {"role": "user", "content": text}]

    def _cache_key(self, messages: list[dict[str, str]]) -> str:
        blob = json.dumps([self.cfg.model, messages], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _request_kwargs(self, structured: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_tokens": self.cfg.max_tokens, "temperature": self.cfg.temperature}
        if structured == "choice":
            kw["extra_body"] = {"structured_outputs": {"choice": SCORE_CHOICES}}
        elif structured == "json_schema":
            kw["response_format"] = JSON_SCHEMA
        return kw

    def _count_retry(self, _exc: BaseException) -> None:
        self.stats.retries += 1

    # -- one prompt ---------------------------------------------------------------------------------------
    async def _send(self, client: AsyncOpenAI, sem: asyncio.Semaphore, messages: list[dict[str, str]],
                    structured: str) -> Any:
        async with sem:
            self.stats.requests += 1
            client = self._outage_client() or client
            return await client.chat.completions.create(
                model=self.cfg.model, messages=messages, timeout=self.cfg.timeout_s, **self._request_kwargs(structured))

    async def _attempt(self, client: AsyncOpenAI, sem: asyncio.Semaphore, messages: list[dict[str, str]]) -> float:
        """One scored reply, or an exception (counted in the stats by kind); a structured-output rejection under
        ``auto`` switches to free text for the session and re-sends at once (not a retry)."""
        try:
            structured = self._structured
            try:
                resp = await self._send(client, sem, messages, structured)
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                if self.cfg.structured_output != "auto" or structured == "none":
                    raise
                if self._structured != "none":  # the endpoint does not take structured outputs: fall back
                    self._structured = "none"
                    self.stats.structured_fallbacks += 1
                resp = await self._send(client, sem, messages, "none")
            try:
                reply = resp.choices[0].message.content if resp.choices else None
            except (IndexError, AttributeError, TypeError) as exc:  # a reply that is not a chat completion
                raise _Malformed(f"malformed response: {exc}") from exc
            score, why = parse_score(reply)
            if score is None:
                raise _BadReply(f"bad reply {str(reply)[:80]!r}: {why}")
            return score
        except openai.APITimeoutError:
            self.stats.count_error("timeout")
            raise
        except openai.APIConnectionError:
            self.stats.count_error("connection")
            raise
        except openai.APIStatusError as exc:
            self.stats.count_error(f"http_{exc.status_code}")
            raise
        except RetryableReply as exc:
            self.stats.count_error("malformed" if isinstance(exc, _Malformed) else "bad_reply")
            raise

    async def _ask(self, messages: list[dict[str, str]]) -> tuple[float | None, str]:
        key = self._cache_key(messages)
        if self._cache is not None and key in self._cache:
            self.stats.cache_hits += 1
            return self._cache[key], "cached"
        client, sem = self._client()
        policy = retrying(self.cfg.max_retries, self.cfg.backoff_s, self.cfg.max_backoff_s, on_retry=self._count_retry)
        try:
            score = await policy(self._attempt, client, sem, messages)
        except (openai.APIError, RetryableReply) as exc:
            why = describe(exc, self.cfg.timeout_s)
            if is_transient(exc):
                return None, f"gave up after {self.cfg.max_retries + 1} attempts: {why}"
            return None, why  # 400/401/403/404…: retrying will not help
        if self._cache is not None:
            self._cache[key] = score
        return score, ""

    # -- public ---------------------------------------------------------------------------------------------
    async def score(self, question: str, reference: str, answer: str, n_clips: int = 0,
                    relevant_clips: Sequence[int] = ()) -> JudgeResult:
        """Mean score over the configured prompts; unscored (None) unless every prompt gave a valid score."""
        msgs = {p: self.render(p, question, reference, answer, n_clips, relevant_clips) for p in self.cfg.prompts}
        outs = await asyncio.gather(*(self._ask(m) for m in msgs.values()))
        per = {p: s for p, (s, _) in zip(msgs, outs)}
        cached = sum(1 for _, why in outs if why == "cached")
        errors = [f"{p}: {why}" for p, (s, why) in zip(msgs, outs) if s is None]
        if errors:
            self.stats.failures += len(errors)
            self.stats.unscored_items += 1
            return JudgeResult(None, per, "; ".join(errors), cached)
        return JudgeResult(sum(per.values()) / len(per), per, "", cached)

    async def score_many(self, items: Sequence[dict[str, Any]]) -> list[JudgeResult]:
        """Score many items concurrently (bounded by ``concurrency``); each item: kwargs of :meth:`score`."""
        return list(await asyncio.gather(*(self.score(**it) for it in items)))

    def score_sync(self, question: str, reference: str, answer: str, n_clips: int = 0,
                   relevant_clips: Sequence[int] = ()) -> JudgeResult:
        """Blocking :meth:`score` for scripts (not inside a running event loop)."""
        async def run() -> JudgeResult:
            try:
                return await self.score(question, reference, answer, n_clips, relevant_clips)
            finally:
                await self.aclose()

        return asyncio.run(run())
