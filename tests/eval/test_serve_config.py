"""Serve app wiring without starting Serve or importing vLLM: config checks, the body-size middleware."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from eval.serve import BodyLimitMiddleware
from polyaudio_rl.core.config import ConfigError, load_config


def test_serve_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="policy_max_replicas"):
        load_config(None, ["serve.policy_replicas=3", "serve.policy_max_replicas=2"])
    with pytest.raises(ConfigError, match="serve.accelerator"):
        load_config(None, ["serve.accelerator=tpu"])
    with pytest.raises(ConfigError, match="unknown config key 'serve.replicas'"):
        load_config(None, ["serve.replicas=2"])


def test_body_limit_middleware_checks_header_and_streamed_bytes():
    async def echo(request):
        return JSONResponse({"n": len(await request.body())})

    app = BodyLimitMiddleware(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_bytes=1000)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            small = await c.post("/", content=b"x" * 1000)
            big = await c.post("/", content=b"x" * 1001)

            async def chunks():  # no Content-Length: counted while streaming
                for _ in range(5):
                    yield b"y" * 300

            streamed = await c.post("/", content=chunks())
            return small, big, streamed

    small, big, streamed = asyncio.run(go())
    assert small.status_code == 200 and small.json() == {"n": 1000}
    assert big.status_code == 413 and "1001 bytes, the limit is 1000 bytes" in big.json()["error"]["message"]
    assert streamed.status_code == 413 and "request body too large" in streamed.json()["error"]["message"]
