"""The qwen2_5_omni family module (polyaudio_rl/core/models/qwen2_5_omni.py): what only this family does."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
TALKER_WARNING = "must be `None` or an integer within the vocabulary"

READS = {  # how a process reads the checkpoint: our processor load; a vLLM process (plugin first, then its config)
    "processor": "from polyaudio_rl.core.model import load_processor\nload_processor(P)",
    "vllm plugin": "from polyaudio_rl.core.models.vllm_plugin import register\nregister()\n"
                   "from transformers import AutoConfig\nAutoConfig.from_pretrained(P)",
}


@pytest.mark.parametrize("read", sorted(READS))
def test_transformers_default_talker_warnings_go_to_the_log_not_the_console(tiny_ckpt_of, read):
    """In a fresh process (transformers warns once a process): reading a Qwen2.5-Omni checkpoint makes transformers
    build its default talker config, whose default token ids lie outside its default vocabulary (seven warnings on
    stderr, on every processor load and in every vLLM process, eval.serve's replicas included). They reach the
    family's logger at DEBUG and nothing reaches stderr."""
    code = textwrap.dedent("""
        import logging
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())
        log = logging.getLogger("polyaudio_rl.core.models.qwen2_5_omni")
        log.setLevel(logging.DEBUG)
        log.addHandler(Keep())
    """)
    code += f"P = {tiny_ckpt_of('qwen2_5_omni')!r}\n{READS[read]}\n"
    code += f"print('logged', sum({TALKER_WARNING!r} in m for m in seen))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert TALKER_WARNING not in out.stderr
    assert "logged 7" in out.stdout
