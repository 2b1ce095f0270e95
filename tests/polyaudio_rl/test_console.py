"""The run console (polyaudio_rl/console.py): library logging reaches the run's log files, not the console."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_transformers_warning_after_install_goes_to_its_log_file_only(tmp_path):
    """In a fresh process (transformers' logging state is per process): transformers is first imported after the
    console is installed, then warns, as loading a Qwen2.5-Omni checkpoint does (its unused talker config's token
    ids). Its own lazily added stderr handler would print the warning on the console too."""
    code = textwrap.dedent(f"""
        import sys
        from polyaudio_rl.console import Console
        assert "transformers" not in sys.modules
        con = Console({str(tmp_path)!r}).install()
        from transformers.utils import logging as hf_logging
        hf_logging.get_logger("transformers.configuration_utils").warning("Model config: talker_token_id out of range")
        con.print("done")
        con.close()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    assert "talker_token_id" not in out.stdout + out.stderr
    assert "talker_token_id" in (tmp_path / "logs" / "transformers.log").read_text()
