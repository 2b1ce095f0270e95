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


def test_readiness_is_200_only_once_every_model_answered_and_503_names_the_others():
    """:class:`eval.serve.Readiness` with stand-in probes and a hand-driven clock: 503 naming the models not yet
    answered (a probe in flight, a failed one with its reason), 200 once all answered; a success older than the TTL
    is re-checked in the background (still ready meanwhile) and a failed re-check makes the model not ready."""
    from eval.serve import Readiness

    now = [0.0]
    gates = {"judge": asyncio.Event(), "policy": asyncio.Event()}
    fail: dict[str, str] = {}
    calls: list[str] = []

    async def probe(model):
        calls.append(model)
        if model in fail:
            raise RuntimeError(fail[model])
        await gates[model].wait()

    async def scenario():
        r = Readiness(["judge", "policy"], probe, ttl_s=10.0, timeout_s=5.0, clock=lambda: now[0])
        status, body = await r.check()
        assert status == 503 and body["not_ready"] == ["judge", "policy"] and "starting" in body["error"]["message"]
        gates["judge"].set()
        await asyncio.sleep(0.01)
        status, body = await r.check()
        assert (status, body["not_ready"]) == (503, ["policy"]) and calls == ["judge", "policy"]  # none started twice
        gates["policy"].set()
        await asyncio.sleep(0.01)
        assert await r.check() == (200, {"status": "ok"})
        now[0] = 11.0  # stale: re-checked, ready meanwhile
        fail["policy"] = "engine died"
        assert (await r.check())[0] == 200
        await asyncio.sleep(0.01)
        status, body = await r.check()
        assert status == 503 and body["not_ready"] == ["policy"] and "RuntimeError: engine died" in body["error"]["message"]

    asyncio.run(scenario())


def test_readiness_probe_timeout_is_not_ready_with_the_reason():
    from eval.serve import Readiness

    async def hangs(model):
        await asyncio.sleep(60)

    async def scenario():
        r = Readiness(["m"], hangs, ttl_s=10.0, timeout_s=0.05)
        assert (await r.check())[0] == 503
        await asyncio.sleep(0.2)
        status, body = await r.check()
        assert status == 503 and "no completion within 0.05 s" in body["error"]["message"]

    asyncio.run(scenario())


def test_a_local_model_source_skips_ray_serve_llms_per_node_download_task(tiny_ckpt):
    """Each LLMServer replica runs Ray Serve LLM's node initialisation; for a model that is a local directory its
    download task (a process importing vLLM) is skipped, for anything else (a hub id) it runs as Ray has it."""
    from eval.serve import llm_configs
    from polyaudio_rl.core.config import ServeConfig

    policy, judge = llm_configs(ServeConfig(), tiny_ckpt, tiny_ckpt)

    def runs_init_node(llm_config) -> bool:  # the callback as the replica makes it (without its placement group)
        callback = llm_config.callback_config.callback_class(llm_config=llm_config)
        asyncio.run(callback.run_callback("on_before_node_init"))
        return callback.ctx.run_init_node

    assert not runs_init_node(policy) and not runs_init_node(judge)
    hub = policy.model_copy(deep=True)
    hub.model_loading_config.model_source = "Qwen/Qwen2-Audio-7B-Instruct"
    assert runs_init_node(hub)
