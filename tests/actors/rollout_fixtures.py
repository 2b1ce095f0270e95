"""Shared helpers of the rollout tests: a config for small engines and a stand-in learner."""
import torch

from polyaudio_rl.core.config import LoraConfig, load_config
from polyaudio_rl.core.model import add_lora, load_model


def small_cfg(**over):
    """The tiny CPU config with fast-starting engines (eager) and short completions."""
    base = {"rollout.enforce_eager": True, "rollout.max_new_tokens": 8, "rollout.kv_cache_memory_gb": 0.25,
            "grpo.group_size": 4, "model.lora.dropout": 0.0}
    base.update(over)
    return load_config(overrides=[f"{k}={v}" for k, v in base.items()])


class StandInLearner:
    """The tiny model with a PEFT LoRA adapter; ``step(seed)`` sets lora_B as training would (non-zero)."""

    def __init__(self, ckpt, rank, alpha):
        torch.manual_seed(0)
        self.model = add_lora(load_model(ckpt), LoraConfig(rank=rank, alpha=alpha, dropout=0.0))

    def step(self, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        return self.model
