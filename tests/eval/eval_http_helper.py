"""Real HTTP servers (FastAPI under uvicorn on 127.0.0.1, a free port, in a thread) for the eval tests that need
an endpoint but not a model: an OpenAI-compatible ``/v1/embeddings`` (hashed bag-of-words vectors) and a scripted
``/v1/chat/completions`` whose behaviour the test sets (answers, outages, 4xx).

Loaded by path from the test modules (pytest runs with --import-mode=importlib, no packages under tests/)."""
from __future__ import annotations

import hashlib
import math
import re
import time
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.http_server import free_port, serve_app  # noqa: F401 (free_port is re-exported for the tests)

DIM = 256


def bow_vector(text: str) -> list[float]:
    """Bag of lower-cased words hashed into DIM buckets (a deterministic stand-in embedding model)."""
    v = [0.0] * DIM
    for w in re.findall(r"\w+", text.lower()):
        v[int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
    return v


class ScriptedServer:
    def __init__(self) -> None:
        self.app = FastAPI()
        self.chat_bodies: list[dict] = []
        self.policy_mode = "answer"   # answer | down (503) | reject (400)
        self.policy_answer = "Audio 1."
        self.judge_reply = "4"
        self.app.get("/v1/models")(self.models)
        self.app.post("/v1/embeddings")(self.embeddings)
        self.app.post("/v1/chat/completions")(self.chat)

    async def models(self):
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in ("policy", "judge")]}

    async def embeddings(self, request: Request):
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": bow_vector(t)} for i, t in enumerate(inputs)],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}

    async def chat(self, request: Request):
        body = await request.json()
        self.chat_bodies.append(body)
        if body["model"] == "policy":
            if self.policy_mode == "down":
                return JSONResponse({"error": {"message": "replica unavailable"}}, status_code=503)
            if self.policy_mode == "reject":
                return JSONResponse({"error": {"message": "audio part 1: clip lasts 31.00 s, over the 30 s limit"}},
                                    status_code=400)
            content = self.policy_answer
        else:
            content = self.judge_reply
        return {"id": f"c{len(self.chat_bodies)}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def policy_calls(self) -> int:
        return sum(1 for b in self.chat_bodies if b["model"] == "policy")


@contextmanager
def running_server():
    fake = ScriptedServer()
    with serve_app(fake.app) as base:
        fake.url = f"{base}/v1"
        yield fake


def cosine(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)
