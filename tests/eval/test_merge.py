"""Merging a trained PEFT adapter into the base weights (what eval.serve --adapter serves)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from eval.merge import MergeError, merge_adapter
from polyaudio_rl.core.config import LoraConfig
from polyaudio_rl.core.model import add_lora, load_model


def test_merged_checkpoint_matches_the_adapter_model(tiny_ckpt, tmp_path):
    torch.manual_seed(0)
    peft_model = add_lora(load_model(tiny_ckpt), LoraConfig()).eval()  # eval: no LoRA dropout
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained-looking adapter (B = 0 at init would merge to the base)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    merged_dir = merge_adapter(tiny_ckpt, str(adapter))
    assert merged_dir == str(tmp_path / "adapter.merged")
    keys = set(load_file(f"{merged_dir}/model.safetensors"))
    assert not any("lora" in k for k in keys)
    assert any(k.startswith("language_model.model.layers.") for k in keys) and "language_model.lm_head.weight" in keys
    assert json.loads(open(f"{merged_dir}/merge_info.json").read())["base"] == tiny_ckpt
    merged = load_model(merged_dir)
    base = load_model(tiny_ckpt)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the adapter did change the model
    # a second call with the same adapter reuses the merged directory
    mtime = (tmp_path / "adapter.merged" / "model.safetensors").stat().st_mtime_ns
    assert merge_adapter(tiny_ckpt, str(adapter)) == merged_dir
    assert (tmp_path / "adapter.merged" / "model.safetensors").stat().st_mtime_ns == mtime


def test_missing_adapter_files_are_named(tiny_ckpt, tmp_path):
    with pytest.raises(MergeError, match="missing adapter_config.json"):
        merge_adapter(tiny_ckpt, str(tmp_path / "nope"))
