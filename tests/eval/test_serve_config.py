"""Serve app wiring without starting Serve: config checks, the body-size middleware, the chat body's checks."""
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


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "request body is not valid JSON"),
    (b"[1, 2]", 400, "request body must be a JSON object, got list"),
    (b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}', 404,
     "model 'other' is not served; served: ['judge', 'polyaudio']"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "'model' is required; served: ['judge', 'polyaudio']"),
    (b'{"model": "polyaudio", "messages": [{"role": "robot", "content": "hi"}]}', 400,
     "messages[0].role must be one of"),
])
def test_a_bad_chat_body_is_refused_with_its_status_and_reason(body, status, message):
    """The ingress's checks before a model runs (eval.serve.parse_chat_request), on Ray's own request model."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from eval.serve import ModelNotServed, parse_chat_request
    from eval.validate import RequestError

    with pytest.raises(RequestError) as err:
        parse_chat_request(body, ChatCompletionRequest, ["judge", "polyaudio"])
    assert err.value.status == status and message in str(err.value)
    assert isinstance(err.value, ModelNotServed) == (status == 404)


def test_a_good_chat_body_is_parsed_and_a_schema_error_is_fastapis():
    from fastapi.exceptions import RequestValidationError
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from eval.serve import parse_chat_request

    body = parse_chat_request(b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}',
                              ChatCompletionRequest, ["polyaudio"])  # one model served: 'model' may be left out
    assert body.model is None and isinstance(body.messages[0]["content"], list)
    with pytest.raises(RequestValidationError):
        parse_chat_request(b'{"model": "polyaudio", "messages": [], "temperature": "hot"}', ChatCompletionRequest,
                           ["polyaudio"])
