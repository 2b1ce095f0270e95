"""The rollout engines on every family beyond the default one (whose engines tests/actors/test_rollout_engine.py,
test_rollout_adapter.py and test_special_tokens.py cover): vLLM (PolyAudio's class of the family) and transformers
give the same greedy tokens on a 3-clip prompt, both with the audio clips expanded to the family's token count; merged and adapter syncs are verified by the probe; the family's
audio special tokens are never sampled even by a checkpoint edited to prefer them."""
from __future__ import annotations

import gc
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.rollout_engine import EngineSpec, HFEngine, VLLMEngine, prompt_token_count
from actors.weight_sync import WeightSyncer, make_probe, reference_logprobs, sync_tolerance
from polyaudio_rl.core.model import load_processor
from polyaudio_rl.core.models import DEFAULT_FAMILY, family_names, family_of_model, get_family
from polyaudio_rl.core.prompts import build_prompt
from polyaudio_rl.core.weights import lora_tensors, merged_lora_weights
from tests.actors.rollout_fixtures import StandInLearner, small_cfg
from tests.conftest import make_sample

pytestmark = pytest.mark.slow
FAMILIES = [f for f in family_names() if f != DEFAULT_FAMILY]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tiny_ckpt_of):
    path = tiny_ckpt_of(request.param)
    proc = load_processor(path)
    prompts = [build_prompt(make_sample("f3", (1.0, 2.0, 1.5)), proc),
               build_prompt(make_sample("f2", (0.6, 1.1), question="Which clip is longest?"), proc)]
    return get_family(request.param), path, proc, prompts


def _close(eng):
    eng.close()
    del eng
    gc.collect()


def _tokens(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


def test_vllm_and_transformers_agree_and_merged_sync_is_verified(fam):
    family, path, proc, prompts = fam
    cfg = small_cfg(**{"rollout.max_new_tokens": 12})
    tol = sync_tolerance(cfg)
    vllm = VLLMEngine(path, cfg.rollout, EngineSpec.from_config(cfg))
    hf = HFEngine(path, cfg.rollout, EngineSpec.from_config(cfg))
    try:
        v, h = vllm.generate(prompts, n=1, greedy=True), hf.generate(prompts, n=1, greedy=True)
        assert _tokens(v) == _tokens(h) and len(v[0].completions[0].token_ids) >= 1
        expanded = [prompt_token_count(p, proc.tokenizer, family) for p in prompts]  # e.g. 375 tokens a Voxtral clip
        assert [g.num_prompt_tokens for g in v] == [g.num_prompt_tokens for g in h] == expanded
        learner = StandInLearner(path, cfg.model.lora.rank, cfg.model.lora.alpha)
        probe = make_probe(proc, cfg.rollout.probe_tokens)
        syncers = [WeightSyncer(e, probe, "merged", tol) for e in (vllm, hf)]
        base = syncers[0].fingerprint()
        peft = learner.step(1)
        weights = merged_lora_weights(peft)
        assert weights and all(".layers." in k for k in weights)  # decoder layers only (names checked by the sync)
        for s in syncers:
            res = s.sync(weights, 1, expected=reference_logprobs(peft, proc, probe))
            assert res.max_abs_diff <= tol
        assert syncers[0].fingerprint().max_abs_diff(base) > 0.05
        after_v, after_h = vllm.generate(prompts, n=1, greedy=True), hf.generate(prompts, n=1, greedy=True)
        assert _tokens(after_v) == _tokens(after_h) != _tokens(v)
    finally:
        _close(vllm)
        _close(hf)


def test_adapter_sync_is_verified(fam):
    family, path, proc, prompts = fam
    cfg = small_cfg(**{"rollout.sync_mode": "adapter"})
    tol = sync_tolerance(cfg)
    eng = VLLMEngine(path, cfg.rollout, EngineSpec.from_config(cfg))
    try:
        learner = StandInLearner(path, cfg.model.lora.rank, cfg.model.lora.alpha)
        probe = make_probe(proc, cfg.rollout.probe_tokens)
        syncer = WeightSyncer(eng, probe, "adapter", tol)
        before = eng.generate(prompts, n=1, greedy=True)
        for version in (1, 2):
            peft = learner.step(version)
            res = syncer.sync(lora_tensors(peft.named_parameters(), family_of_model(peft)), version,
                              expected=reference_logprobs(peft, proc, probe))
            assert res.max_abs_diff <= tol
        assert _tokens(eng.generate(prompts, n=1, greedy=True)) != _tokens(before)
    finally:
        _close(eng)


@pytest.fixture(scope="module")
def audio_loving(fam, tmp_path_factory):
    """The tiny checkpoint with lm_head rows of the audio placeholder and its begin token at ±1000·d: unconstrained,
    nearly every step would emit one of them."""
    family, path, proc, _ = fam
    out = tmp_path_factory.mktemp("ckpt") / f"audio-loving-{family.name}"
    shutil.copytree(path, out)
    sd = load_file(str(out / "model.safetensors"))
    w = sd[family.hub_key("lm_head.weight")]
    ids = family.special_ids(proc.tokenizer)
    d = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0))
    w[ids[0]], w[ids[1]] = 1000.0 * d / d.norm(), -1000.0 * d / d.norm()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    if (out / "consolidated.safetensors").is_file():  # a family whose vLLM class reads its own format (Voxtral)
        cs = load_file(str(out / "consolidated.safetensors"))
        cs.update(family.vllm_weights({family.hub_key("lm_head.weight"): w}, str(out)))
        save_file(cs, str(out / "consolidated.safetensors"), metadata={"format": "pt"})
    return str(out)


def test_audio_tokens_are_never_sampled(fam, audio_loving):
    from vllm import SamplingParams

    family, _, proc, prompts = fam
    special = set(family.special_ids(proc.tokenizer))
    cfg = small_cfg(**{"rollout.max_new_tokens": 8, "rollout.temperature": 1.0})
    eng = VLLMEngine(audio_loving, cfg.rollout, EngineSpec.from_config(cfg))
    try:
        outs = eng.llm.generate([family.vllm_input(p, proc.tokenizer) for p in prompts],
                                SamplingParams(n=4, max_tokens=8, temperature=1.0, seed=0, ignore_eos=True),
                                use_tqdm=False)
        raw = [t for o in outs for c in o.outputs for t in c.token_ids]
        assert sum(t in special for t in raw) > len(raw) // 2, raw  # the edit works without the suppression
        for greedy in (False, True):
            toks = [t for g in eng.generate(prompts, 4, greedy=greedy, ignore_eos=True)
                    for c in g.completions for t in c.token_ids]
            assert len(toks) == len(prompts) * 4 * 8 and not special & set(toks)
    finally:
        _close(eng)
