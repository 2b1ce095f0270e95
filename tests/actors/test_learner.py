"""2-worker DeepSpeed learners on CPU (gloo, fp32) through Ray: GRPO and SFT steps on the tiny checkpoint, and
resume-from-checkpoint == an uninterrupted run."""
import json
import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def _sample(sid, durations, answer="Audio 1.", question="Which clip is the loudest?"):
    from polyaudio_rl.core.schema import Clip, Sample
    from polyaudio_rl.core.audio import encode_flac

    sr = 16000
    clips = []
    for i, d in enumerate(durations):
        t = np.arange(int(d * sr)) / sr
        wave = (0.2 * (i + 1) * np.sin(2 * np.pi * 220.0 * (i + 1) * t)).astype(np.float32)
        clips.append(Clip(audio=encode_flac(wave, sr), sample_rate=sr, duration=d, source_id=f"tone{i}", licence="CC0"))
    return Sample(id=sid, task="comparison", split="train", clips=clips, question=question, answer=answer,
                  key={"type": "clip", "value": 1}, relevant_clips=[1])


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(tiny_ckpt, tmp_path, *extra):
    from polyaudio_rl.core.config import load_config

    return load_config(overrides=[
        f"model.path={tiny_ckpt}", "model.lora.dropout=0.1", "learner.num_workers=2", "learner.micro_batch_size=2",
        "learner.cpus_per_worker=1", "rollout.max_new_tokens=8", f"run_dir={tmp_path}", *extra,
    ])


def _batches(tiny_processor, n_batches=3, seed=0):
    """Scored groups: 2 prompts × 3 completions; half the completions carry (synthetic) rollout log-probs."""
    from polyaudio_rl.core.batching import TrainItem
    from polyaudio_rl.core.prompts import build_prompt

    prompts = [build_prompt(_sample("g-a", (0.5, 1.0)), tiny_processor),
               build_prompt(_sample("g-b", (1.0, 0.5)), tiny_processor)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        items, rewards = [], []
        for g, p in enumerate(prompts):
            for k in range(3):
                ids = rng.integers(8, 1000, size=int(rng.integers(3, 7))).tolist()
                old = (np.log(1 / 1024) + rng.normal(0, 0.3, len(ids))).clip(max=-1e-3).tolist() if k != 1 else None
                items.append(TrainItem(p, ids, old_logprobs=old, group_id=f"{g}"))
                rewards.append(float(rng.integers(0, 3)))
        out.append((items, rewards))
    return out


def _advantaged(cfg, items, rewards):
    """The batch as the driver hands it to the learner: dynamic sampling and advantages (driver.group_advantages)."""
    from polyaudio_rl.driver import group_advantages

    return group_advantages(items, rewards, cfg.grpo)[0]


def test_grpo_two_workers_resume_equals_uninterrupted(ray_local, tiny_ckpt, tiny_processor, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    from actors.learner import Learner
    from polyaudio_rl.core.model import load_model

    cfg = _cfg(tiny_ckpt, tmp_path, "learner.zero_stage=2", "grpo.inner_epochs=2", "grpo.lr=1e-3",
               "grpo.kl_coef=0.04", "grpo.dynamic_sampling=true")
    data = [_advantaged(cfg, *batch) for batch in _batches(tiny_processor)]
    learner = Learner(cfg, "grpo")
    try:
        m1 = learner.train_grpo_step(data[0])
        m2 = learner.train_grpo_step(data[1])
        w2 = learner.get_weights("adapter")
        ckpt = learner.save_checkpoint(str(tmp_path / "ck"), {"data_position": 2})
        m3 = learner.train_grpo_step(data[2])
        w3 = learner.get_weights("adapter")
        merged = learner.get_weights("merged")
    finally:
        learner.shutdown()

    for m in (m1, m2, m3):
        for key in ("loss", "kl", "clip_frac", "entropy", "grad_norm", "tokens"):
            assert np.isfinite(m[key]), (key, m)
        assert m["tokens"] > 0 and m["grad_norm"] > 0
    assert m2["kl"] > 0  # the adapter moved away from the reference
    assert max(m["clip_frac"] for m in (m1, m2, m3)) > 0  # off-policy log-probs and μ=2 make clipping bite
    assert set(w3) == set(w2) and all(k.startswith("language_model.model.layers.") for k in w3)
    assert any(not torch.equal(w2[k], w3[k]) for k in w3)
    base = load_model(tiny_ckpt)
    base_sd = dict(base.state_dict())
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert merged[q].shape == base_sd["model.language_model.layers.0.self_attn.q_proj.weight"].shape
    # merged = W + (alpha/r)·B·A with the step-3 adapter
    a, b = w3[q.replace(".weight", ".lora_A.weight")], w3[q.replace(".weight", ".lora_B.weight")]
    torch.testing.assert_close(merged[q], base_sd["model.language_model.layers.0.self_attn.q_proj.weight"] + 2.0 * b @ a)

    # the adapter is plain PEFT: anyone loads it with PeftModel.from_pretrained
    peft = PeftModel.from_pretrained(base, f"{ckpt}/adapter")
    loaded = get_peft_model_state_dict(peft)
    assert len(loaded) == len(w2)
    lw = loaded["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight"]
    torch.testing.assert_close(lw, w2[q.replace(".weight", ".lora_B.weight")])
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["client_state"] == {"data_position": 2} and state["optimizer_step"] == 4

    resumed = Learner(cfg, "grpo", resume_from=ckpt)
    try:
        assert resumed.step == 2 and resumed.client_state == {"data_position": 2}
        r3 = resumed.train_grpo_step(data[2])
        rw3 = resumed.get_weights("adapter")
    finally:
        resumed.shutdown()
    for key in ("loss", "kl", "clip_frac", "grad_norm", "entropy", "loss_last_epoch"):
        assert r3[key] == pytest.approx(m3[key], rel=1e-5, abs=1e-7), key
    for k in w3:
        torch.testing.assert_close(rw3[k], w3[k], rtol=1e-5, atol=1e-7)


def test_sharding_does_not_change_the_update(ray_local, tiny_ckpt, tiny_processor, tmp_path):
    """One GRPO step on 1 worker and on 2 workers (uneven shards, fillers) gives the same loss and adapter; the
    sync probe's cached inputs (``cache_key``) give the same log-probs as fresh ones after the update.

    The 2-worker learner gets the datagen Samples instead of built prompts (the driver may pass either)."""
    from dataclasses import replace

    from actors.learner import Learner
    from polyaudio_rl.core.prompts import build_prompt

    items, rewards = _batches(tiny_processor, n_batches=1, seed=3)[0]
    items, rewards = items[:5], rewards[:5]  # 5 completions: shards of 3 and 2
    built = [items[0].prompt, items[3].prompt]
    results = {}
    for n in (1, 2):
        if n == 2:
            items = [replace(it, prompt=it.prompt.sample) for it in items]
        cfg = _cfg(tiny_ckpt, tmp_path, f"learner.num_workers={n}", "model.lora.dropout=0.0", "grpo.lr=1e-3",
                   "grpo.loss_agg=seq-mean-token-mean", "learner.zero_stage=2")
        learner = Learner(cfg, "grpo")
        try:
            probe = [replace(items[0], prompt=build_prompt(_sample("probe", (0.6, 0.9)), tiny_processor))]
            before = learner.completion_logprobs(probe, cache_key="probe")  # builds the probe's inputs once
            if n == 2:  # each worker encodes the prompt of its shard ahead (as while rollouts generate)
                learner.prefetch(built, group_size=3)
            batch = _advantaged(cfg, items, rewards)
            m0 = learner.train_grpo_step(batch)  # step 1 only moves lora_B (B starts at 0); step 2 both
            m = learner.train_grpo_step(batch)
            # prompt cache: n=1 builds both prompts in step 1 and finds them in step 2; n=2 finds them prefetched
            assert (m0["prompts_cached"], m0["prompts_encoded"]) == ((2.0, 0.0) if n == 2 else (0.0, 2.0))
            assert (m["prompts_cached"], m["prompts_encoded"]) == (2.0, 0.0)
            results[n] = (m, learner.get_weights("adapter"))
            # the probe's kept inputs give the new policy's log-probs, exactly as inputs built afresh do
            cached, fresh = learner.completion_logprobs(probe, cache_key="probe"), learner.completion_logprobs(probe)
            assert cached == fresh and cached != before
        finally:
            learner.shutdown()
    (m1, w1), (m2, w2) = results[1], results[2]
    for key in ("loss", "kl", "grad_norm", "clip_frac"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), key
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


def test_sft_cli_zero3_resume_equals_uninterrupted(ray_local, tiny_ckpt, tmp_path):
    from polyaudio_rl.core.schema import write_shard
    from polyaudio_rl.sft import run_sft
    from safetensors.torch import load_file

    train = tmp_path / "train"
    train.mkdir()
    samples = [_sample(f"sft-{i}", (0.5 + 0.25 * (i % 3), 0.75), answer=f"Audio {1 + i % 2} is the loudest.")
               for i in range(7)]
    samples.append(_sample("sft-bad", (0.5,) * 6))  # 6 clips > data.max_clips=5: skipped and reported
    write_shard(str(train / "part-0.parquet"), samples)
    common = [f"data.train_dir={train}", "data.build_if_missing=false", "sft.batch_size=3", "sft.epochs=2",
              "sft.lr=1e-3", "learner.zero_stage=3", "learner.checkpoint_every=2"]

    full = run_sft(_cfg(tiny_ckpt, tmp_path / "full", *common, "sft.max_steps=4"), progress=False)
    assert full["steps"] == 4 and "sft-bad" in full["skipped"] and "6 clips" in full["skipped"]["sft-bad"]
    lines = [json.loads(x) for x in (tmp_path / "full" / "sft_metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert lines[-1]["nll"] < lines[0]["nll"]  # it learns the answers
    assert (tmp_path / "full" / "sft_loss.png").stat().st_size > 0
    step2 = tmp_path / "full" / "checkpoints" / "step-000002"
    state = json.loads((step2 / "trainer_state.json").read_text())
    assert state["client_state"]["data_position"] == {"epoch": 0, "index": 6}

    part = run_sft(_cfg(tiny_ckpt, tmp_path / "part", *common, "sft.max_steps=4"), resume_from=str(step2),
                   progress=False)
    assert part["steps"] == 4
    resumed_lines = [json.loads(x) for x in (tmp_path / "part" / "sft_metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in resumed_lines] == [3, 4]
    for a, b in zip(resumed_lines, lines[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    wa = load_file(f"{full['checkpoint']}/adapter/adapter_model.safetensors")
    wb = load_file(f"{part['checkpoint']}/adapter/adapter_model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-7)
    ob = load_file(f"{part['checkpoint']}/optimizer.safetensors")
    oa = load_file(f"{full['checkpoint']}/optimizer.safetensors")
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=1e-5, atol=1e-9)


def test_tis_proximal_logprobs_are_the_policy_before_the_update(ray_local, tiny_ckpt, tiny_processor, tmp_path):
    """grpo.is_correction='tis' without dropout takes the proximal log-probs from the first inner epoch's own
    forward (no extra pass): the importance weights it reports are min(π_before / π_behaviour, cap) per token, with
    π_before measured separately before the step."""
    from actors.learner import Learner

    items, rewards = _batches(tiny_processor, n_batches=1, seed=5)[0]
    cfg = _cfg(tiny_ckpt, tmp_path, "learner.num_workers=1", "model.lora.dropout=0.0", "grpo.is_correction=tis",
               "grpo.max_policy_lag=1",  # the learner does not read the lag; the config asks for one with TIS
               "grpo.tis_cap=1.5", "grpo.inner_epochs=2", "grpo.kl_coef=0.0", "grpo.lr=1e-2")
    learner = Learner(cfg, "grpo")
    try:
        items = _advantaged(cfg, items, rewards)
        learner.train_grpo_step(items)  # move off the initial adapter (B = 0)
        before = learner.completion_logprobs(items)
        m = learner.train_grpo_step(items)
    finally:
        learner.shutdown()
    weights = [min(math.exp(p - (b if it.old_logprobs else p)), 1.5)
               for it, lp in zip(items, before) for p, b in zip(lp, it.old_logprobs or lp)]
    assert m["is_weight_mean"] == pytest.approx(sum(weights) / len(weights), rel=1e-5)
    assert abs(m["is_weight_mean"] - 1.0) > 1e-3  # the synthetic behaviour log-probs are off-policy: weights bite


def test_kl_reference_init_is_the_starting_adapter_also_after_a_resume(ray_local, tiny_ckpt, tiny_processor, tmp_path):
    """grpo.kl_reference=init: the KL is to the adapter the stage started from — 0 at the first update, where the
    policy is that adapter (the base model would not give 0: the adapter is far from it) — and a resumed learner reads
    that adapter again: its step 3 repeats the uninterrupted step 3, KL included."""
    from actors.learner import Learner
    from tests.polyaudio_rl.reference_run import TINY_CPU, write_foreign_adapter

    start = str(write_foreign_adapter(tiny_ckpt, TINY_CPU, tmp_path / "start"))
    cfg = _cfg(tiny_ckpt, tmp_path, "model.lora.dropout=0.0", "learner.num_workers=1", "grpo.lr=1e-2",
               "grpo.kl_coef=0.5", "grpo.kl_reference=init")
    data = [_advantaged(cfg, *batch) for batch in _batches(tiny_processor)]
    learner = Learner(cfg, "grpo", init_adapter=start)
    try:
        m1 = learner.train_grpo_step(data[0])
        m2 = learner.train_grpo_step(data[1])
        ckpt = learner.save_checkpoint(str(tmp_path / "ck"), {})
        m3 = learner.train_grpo_step(data[2])
    finally:
        learner.shutdown()
    assert m1["kl"] == pytest.approx(0.0, abs=1e-7) and m2["kl"] > 1e-5, (m1["kl"], m2["kl"])

    resumed = Learner(cfg, "grpo", resume_from=ckpt, init_adapter=start)
    try:
        r3 = resumed.train_grpo_step(data[2])
    finally:
        resumed.shutdown()
    for key in ("loss", "kl", "grad_norm"):
        assert r3[key] == pytest.approx(m3[key], rel=1e-5, abs=1e-7), key
