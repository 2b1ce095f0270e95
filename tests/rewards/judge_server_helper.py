"""A real OpenAI-compatible chat-completions HTTP server for the judge tests (FastAPI under uvicorn on
127.0.0.1, a free port, in a thread). Its behaviour is chosen by the request's ``model`` field.

Loaded by path from the test modules (pytest runs with --import-mode=importlib, no packages under tests/)."""
from __future__ import annotations

import asyncio
import re
import time
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.http_server import free_port, serve_app  # noqa: F401 (free_port is re-exported for the tests)


class ScriptedJudge:
    """An OpenAI-compatible chat endpoint whose behaviour is chosen by the request's ``model``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.flaky_failures = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    def reply(self, model: str, body: dict) -> str:
        user = body["messages"][-1]["content"]
        prompt_b = "[Assistant response]" in user
        right = "ANSWER-RIGHT" in user
        if model in ("good", "strict", "flaky"):
            # prompt A answers a bare digit, prompt B chats: right -> 5 and "Score: 4/5"; wrong -> 1 and "Score: 2/5"
            if prompt_b:
                return "Score: 4/5 - accurate." if right else "Score: 2/5 - it names the wrong clip."
            return "5" if right else "1"
        if model == "reference":
            # grades like a careful judge on these tasks: 5 if the model answer contains the reference answer
            ref = re.search(r"(?:Reference answer: |\[Ground-truth answer\]\n)(.*?)\n", user)
            ans = re.search(r"(?:Model answer: |\[Assistant response\]\n)(.*?)\n\n", user, re.S)
            if ref is None or ans is None:
                raise AssertionError(f"not a rubric prompt: {user[:200]}")
            return "5" if ref.group(1).strip().lower().rstrip(".") in ans.group(1).lower() else "1"
        if model == "choice":
            # honours vLLM structured_outputs: answers one of the allowed choices
            choices = body.get("structured_outputs", {}).get("choice")
            return choices[3] if choices else "no structured output was requested"
        if model == "json":
            return '{"score": 3}'
        if model == "garbage":
            return "I cannot decide, the answer seems fine but maybe not."
        if model == "range":
            return "Score: 9"
        raise AssertionError(model)

    async def chat(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        model = body.get("model")
        if model == "slow":
            await asyncio.sleep(3.0)
        if model == "strict" and "structured_outputs" in body:
            return JSONResponse({"error": {"message": "Unrecognized request argument: structured_outputs",
                                           "type": "invalid_request_error"}}, status_code=400)
        if model == "flaky" and self.flaky_failures < 2:
            self.flaky_failures += 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if model == "missing":
            return JSONResponse({"error": {"message": "model not found"}}, status_code=404)
        content = self.reply(model, body) if model != "slow" else "3"
        return {
            "id": f"chatcmpl-{len(self.bodies)}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }


@contextmanager
def running_judge():
    """Start a :class:`ScriptedJudge` server; yields it with ``.url`` set to its ``/v1`` base URL."""
    fake = ScriptedJudge()
    with serve_app(fake.app) as base:
        fake.url = f"{base}/v1"
        yield fake
