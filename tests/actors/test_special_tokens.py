"""Audio placeholder tokens are never sampled (issue 14 item 5), by either rollout engine.

The tiny checkpoint is edited so that, unconstrained, nearly every step would emit ``<|audio_bos|>`` or
``<|AUDIO|>``: their ``lm_head`` rows become ±1000·d for a unit direction d, so one of the two gets a logit of
~1000·|h·d| at every position while all other logits stay O(1). The baselines prove the edit works (plain
``generate`` / vLLM without the engine's suppression emit them); the engines then never do, sampling or greedy.
"""
import gc
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.rollout_engine import EngineSpec, HFEngine, VLLMEngine, vllm_suppression
from polyaudio_rl.core.batching import audio_special_ids
from polyaudio_rl.core.models import get_family
from polyaudio_rl.core.prompts import build_prompt, processor_inputs, to_vllm_input
from tests.actors.rollout_fixtures import small_cfg

AUDIO_SPECIAL_TOKENS = get_family("qwen2_audio").audio_special_tokens

pytestmark = pytest.mark.slow
G = 4


@pytest.fixture(scope="module")
def audio_loving_ckpt(tiny_ckpt, tmp_path_factory, tiny_processor):
    out = tmp_path_factory.mktemp("ckpt") / "audio-loving"
    shutil.copytree(tiny_ckpt, out)
    sd = load_file(str(out / "model.safetensors"))
    w = sd["language_model.lm_head.weight"]
    tok = tiny_processor.tokenizer
    bos, audio = tok.convert_tokens_to_ids("<|audio_bos|>"), tok.convert_tokens_to_ids("<|AUDIO|>")
    d = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0))
    d = d / d.norm()
    w[bos], w[audio] = 1000.0 * d, -1000.0 * d
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    from tests.conftest import make_sample

    return [build_prompt(make_sample("st-a", (1.0, 0.5)), tiny_processor),
            build_prompt(make_sample("st-b", (0.6, 1.2, 0.8), question="Which clip is longest?"), tiny_processor)]


@pytest.fixture(scope="module")
def cfg():
    return small_cfg(**{"rollout.max_new_tokens": 12, "rollout.temperature": 1.0})


def _special(tiny_processor):
    return set(audio_special_ids(tiny_processor.tokenizer))


def test_the_suppressed_ids_are_the_audio_placeholders(tiny_processor):
    tok = tiny_processor.tokenizer
    ids = audio_special_ids(tok)
    assert ids == sorted(tok.convert_tokens_to_ids(t) for t in AUDIO_SPECIAL_TOKENS) and 4 in ids
    words, bias = vllm_suppression(tok, ids)  # each is one token: vLLM blocks it with a -inf logit
    assert sorted(words) == sorted(AUDIO_SPECIAL_TOKENS) and bias == {}


def _emitted(groups):
    return [t for g in groups for c in g.completions for t in c.token_ids]


def test_hf_engine_never_samples_audio_tokens(audio_loving_ckpt, cfg, prompts, tiny_processor):
    special = _special(tiny_processor)
    eng = HFEngine(audio_loving_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    batch = processor_inputs(prompts, tiny_processor, padding_side="left")
    with torch.no_grad():  # the baseline: plain generate, no suppression
        raw = eng.model.generate(**batch, max_new_tokens=8, do_sample=True, top_k=0,
                                 pad_token_id=tiny_processor.tokenizer.pad_token_id)
    raw_new = raw[:, batch["input_ids"].shape[1]:].flatten().tolist()
    assert sum(t in special for t in raw_new) > len(raw_new) // 2, raw_new
    for greedy in (False, True):
        groups = eng.generate(prompts, G, greedy=greedy, ignore_eos=True)
        toks = _emitted(groups)
        assert len(toks) == len(prompts) * G * cfg.rollout.max_new_tokens
        assert not special & set(toks), f"greedy={greedy}: sampled {sorted(special & set(toks))}"
        for g in groups:  # the reported log-probs are still the model's own (finite, raw)
            for c in g.completions:
                assert all(lp <= 0.0 and lp > -float("inf") for lp in c.logprobs)


def test_vllm_engine_never_samples_audio_tokens(audio_loving_ckpt, cfg, prompts, tiny_processor):
    from vllm import SamplingParams

    special = _special(tiny_processor)
    eng = VLLMEngine(audio_loving_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    try:
        # the baseline: the same engine without the suppression emits them
        outs = eng.llm.generate([to_vllm_input(p) for p in prompts],
                                SamplingParams(n=G, max_tokens=8, temperature=1.0, seed=0, ignore_eos=True),
                                use_tqdm=False)
        raw = [t for o in outs for c in o.outputs for t in c.token_ids]
        assert sum(t in special for t in raw) > len(raw) // 2, raw
        for greedy in (False, True):
            groups = eng.generate(prompts, G, greedy=greedy, ignore_eos=True)
            toks = _emitted(groups)
            assert len(toks) == len(prompts) * G * cfg.rollout.max_new_tokens
            assert not special & set(toks), f"greedy={greedy}: sampled {sorted(special & set(toks))}"
    finally:
        eng.close()
        del eng
        gc.collect()
