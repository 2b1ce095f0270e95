"""Adapter sync: only the LoRA tensors reach the engine, served by the LoRA-capable Qwen2-Audio registered with
vLLM (the family's LoRA-capable class), one new adapter per version; verified against the learner's model."""
import gc
import os

import numpy as np
import pytest

from polyaudio_rl.core.prompts import build_prompt
from actors.rollout_engine import EngineSpec, HFEngine, SyncError, VLLMEngine, hf_completion_logprobs
from actors.weight_sync import WeightSyncer, make_probe, reference_logprobs, sync_tolerance
from polyaudio_rl.core.models import family_of_model
from polyaudio_rl.core.weights import lora_tensors
from tests.actors.rollout_fixtures import StandInLearner, small_cfg
from tests.conftest import make_sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cfg():
    return small_cfg(**{"rollout.sync_mode": "adapter"})


@pytest.fixture(scope="module")
def engine(tiny_ckpt, cfg):
    eng = VLLMEngine(tiny_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    yield eng
    eng.close()
    del eng
    gc.collect()


def test_adapter_sync_changes_outputs_matches_learner_and_detects_a_skipped_sync(engine, cfg, tiny_ckpt,
                                                                                 tiny_processor):
    tol = sync_tolerance(cfg)
    learner = StandInLearner(tiny_ckpt, cfg.model.lora.rank, cfg.model.lora.alpha)
    probe = make_probe(tiny_processor, cfg.rollout.probe_tokens)
    prompts = [build_prompt(make_sample("a0", (1.0, 2.0, 1.5)), tiny_processor),
               build_prompt(make_sample("a1", (0.6, 1.1)), tiny_processor)]
    syncer = WeightSyncer(engine, probe, "adapter", tol)
    base_fp = syncer.fingerprint()
    before = engine.generate(prompts, n=1, greedy=True)

    for version, seed in ((1, 1), (2, 2)):
        peft = learner.step(seed)
        tensors = lora_tensors(peft.named_parameters(), family_of_model(peft))
        assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
        assert all(k.startswith("language_model.model.layers.") for k in tensors)  # hub names, LM only
        res = syncer.sync(tensors, version, expected=reference_logprobs(peft, tiny_processor, probe))
        assert res.version == version and res.max_abs_diff <= tol and res.mode == "adapter"
        assert res.fingerprint.max_abs_diff(base_fp) > 0.05
        after = engine.generate(prompts, n=1, greedy=True)
        assert all(g.policy_version == version for g in after)
        assert [g.completions[0].token_ids for g in after] != [g.completions[0].token_ids for g in before]
        for p, g in zip(prompts, after):
            ref = hf_completion_logprobs(peft, tiny_processor, p, g.completions[0].token_ids)
            assert np.allclose(g.completions[0].logprobs, ref, atol=tol)
        assert len(os.listdir(engine._adapter_root)) == 1  # the previous version's adapter is unloaded and deleted

    learner.step(3)  # skipped sync
    with pytest.raises(SyncError, match="not in effect"):
        syncer.verify(reference_logprobs(learner.model, tiny_processor, probe))


def test_hf_engine_adapter_sync_matches_learner(cfg, tiny_ckpt, tiny_processor):
    tol = sync_tolerance(cfg)
    learner = StandInLearner(tiny_ckpt, cfg.model.lora.rank, cfg.model.lora.alpha)
    hf = HFEngine(tiny_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    syncer = WeightSyncer(hf, make_probe(tiny_processor, cfg.rollout.probe_tokens), "adapter", tol)
    for version, seed in ((1, 1), (2, 2)):  # the second adapter replaces the first (not added on top)
        peft = learner.step(seed)
        res = syncer.sync(lora_tensors(peft.named_parameters(), family_of_model(peft)), version,
                          expected=reference_logprobs(peft, tiny_processor, syncer.probe))
        assert res.max_abs_diff <= tol
    with pytest.raises(SyncError, match="rank 4, config says model.lora.rank=8"):
        from polyaudio_rl.core.weights import write_peft_adapter
        import torch

        write_peft_adapter({"language_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 128)},
                           "/tmp/never-written", rank=8, alpha=16)
