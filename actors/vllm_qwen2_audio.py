"""The ``vllm.general_plugins`` target that virtual environments installed from an earlier pyproject.toml name
(``polyaudio_qwen2_audio``); it registers every family's classes (:mod:`polyaudio_rl.core.models.vllm_plugin`)."""
from polyaudio_rl.core.models.vllm_plugin import register

__all__ = ["register"]
