"""The driver's handle on the DeepSpeed learner worker group: GRPO and LoRA-SFT steps, scheduled by Ray.

Why a worker group of Ray actors and not ``ray.train.torch.TorchTrainer``: ``TorchTrainer.fit()`` runs one
``train_loop_per_worker`` to completion, while the RL driver must interleave, step by step, rollouts (vLLM actors),
rewards, a learner update and a weight sync. :class:`Learner` does what Ray Train does for its workers — one actor per
rank in a placement group, MASTER_ADDR/PORT from rank 0, ``torch.distributed`` (gloo on CPU, NCCL on GPUs),
``deepspeed.initialize`` inside each worker (:class:`actors.learner_worker.LearnerWorker`) — and exposes every step as
a method call (the OpenRLHF pattern)::

    learner = Learner(cfg, stage="grpo")              # or stage="sft"; resume_from=<checkpoint dir>
    learner = Learner(cfg, stage="grpo", init_adapter=<SFT checkpoint dir>)  # GRPO from the SFT adapter
    metrics = learner.train_grpo_step(items)           # items: list[TrainItem] carrying their advantages
    weights = learner.get_weights("merged")            # {hub name: tensor} for vLLM load_weights
    weights, probe_lps = learner.sync_half(transport, mode, version, probe_item)  # a sync's learner half
    learner.save_checkpoint(path, client_state={...}); learner.shutdown()

The learner takes advantages: the driver computes them (``polyaudio_rl.driver.group_advantages``, after dynamic
sampling). Per step the handle shards the completions contiguously (a group's completions stay together, so each prompt is
encoded once), computes the GLOBAL token/sequence counts, and gives every worker the same number of micro-batches
(ZeRO's collectives need equal call counts; a short shard gets zero-weight fillers). The workers' sums are reduced to
the step's metrics by :func:`actors.learner_metrics.reduce_step`.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from polyaudio_rl.core.cluster import connect_ray
from polyaudio_rl.core.config import Config
from polyaudio_rl.core.batching import BatchError, TrainItem
from polyaudio_rl.core.grpo_loss import GlobalCounts
from polyaudio_rl.core.prompts import MultiAudioPrompt

from .learner_metrics import reduce_step
from .learner_worker import STAGES, LearnerWorker

__all__ = ["Learner", "LearnerWorker", "STAGES"]


# ==============================================================================================================
class Learner:
    """The driver's handle on the learner worker group (see the module docstring)."""

    def __init__(self, cfg: Config, stage: str = "grpo", resume_from: str | None = None, ray_init: bool = True,
                 init_adapter: str | None = None, total_steps: int = 0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from polyaudio_rl.core.model import resolve_path

        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.cfg, self.stage = cfg, stage
        if ray_init:
            connect_ray(cfg)  # joins the configured cluster, or starts a local Ray, as every entry point does
        self.model_path = resolve_path(cfg.model)  # written once here, never raced by the workers
        lc = cfg.learner
        n = lc.num_workers
        bundle = {"CPU": lc.cpus_per_worker, **({"GPU": 1} if lc.use_gpu else {})}
        self.pg = placement_group([bundle] * n, strategy="PACK")
        ray.get(self.pg.ready(), timeout=300)
        remote_cls = ray.remote(LearnerWorker)
        self.workers = [
            remote_cls.options(
                num_cpus=lc.cpus_per_worker, num_gpus=1 if lc.use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(lc.torch_threads or max(1, int(lc.cpus_per_worker))),
                                          "TOKENIZERS_PARALLELISM": "false"}},
            ).remote(cfg, stage, r, n, self.model_path)
            for r in range(n)
        ]
        try:
            addr, port = ray.get(self.workers[0].address.remote())
            infos = ray.get([w.setup.remote(addr, port, resume_from, init_adapter, total_steps) for w in self.workers])
        except BaseException:
            self.shutdown()  # never leave half-started workers (and their placement group) behind
            raise
        self.info = infos[0]
        self.step = infos[0]["step"]
        self.client_state = infos[0]["client_state"]  # what the checkpoint's writer stored (data position, ...)
        self.processor = None

    # ----------------------------------------------------------------------------------------------------------
    def _prepare(self, items: Sequence[TrainItem]) -> list[TrainItem]:
        """Items whose ``prompt`` is a datagen ``Sample`` (or its row dict) get their MultiAudioPrompt built here
        (once per sample object, so a group shares one prompt)."""
        from polyaudio_rl.core.prompts import build_prompt_from_config

        out, built = [], {}
        for it in items:
            if not isinstance(it.prompt, MultiAudioPrompt):
                if self.processor is None:
                    from polyaudio_rl.core.model import load_processor

                    self.processor = load_processor(self.model_path)
                key = id(it.prompt)
                if key not in built:
                    built[key] = build_prompt_from_config(it.prompt, self.processor, self.cfg.data)
                it = replace(it, prompt=built[key])
            out.append(it)
        return out

    def _bounds(self, n_items: int) -> list[tuple[int, int]]:
        """Worker r trains on items [start, end) of a step's batch: contiguous shards of ceil(n / workers)."""
        size = math.ceil(n_items / len(self.workers))
        return [(r * size, min(n_items, (r + 1) * size)) for r in range(len(self.workers))]

    def _shard(self, items: list[TrainItem]) -> tuple[list[list[TrainItem]], int]:
        shards = [items[a:b] for a, b in self._bounds(len(items))]
        shards = [s if s else [replace(items[0], pad=True)] for s in shards]  # fewer items than workers
        num_micro = max(math.ceil(len(s) / self.cfg.learner.micro_batch_size) for s in shards)
        return shards, num_micro

    def prefetch(self, prompts: Sequence[MultiAudioPrompt], group_size: int) -> None:
        """Have each worker encode, in the background, the prompts of the shard it will train on when these
        prompts come as one step of ``group_size`` completions each (dropped groups only shift a few: those are
        encoded in the step). Returns at once; the work queues on the workers like any call."""
        if not prompts or not self.cfg.learner.uses_prompt_cache:
            return
        for w, (a, b) in zip(self.workers, self._bounds(len(prompts) * group_size)):
            if b > a:  # prompts of items a .. b-1
                w.prefetch.remote(list(prompts[a // group_size : (b - 1) // group_size + 1]))

    def _counts(self, items: Sequence[TrainItem]) -> GlobalCounts:
        real = [it for it in items if not it.pad]
        norm_len = self.cfg.grpo.loss_norm_len or self.cfg.rollout.max_new_tokens
        return GlobalCounts(tokens=sum(len(it.completion_ids) for it in real), seqs=len(real), norm_len=norm_len)

    def _run(self, method: str, shards, *args) -> list[Any]:
        import ray

        return ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shards)])

    def _train_step(self, stage: str, items: Sequence[TrainItem]) -> tuple[list[TrainItem], dict[str, float]]:
        """One optimizer step of ``stage`` on every worker's shard; the prepared items and the reduced metrics."""
        if self.stage != stage:
            raise RuntimeError(f"this learner was built for stage {self.stage!r}, not {stage}")
        items = self._prepare(items)
        if not items:
            raise BatchError(f"train_{stage}_step: empty batch")
        counts = self._counts(items)
        shards, num_micro = self._shard(items)
        t0 = time.perf_counter()
        results = self._run(f"{stage}_step", shards, counts, num_micro)
        wall = time.perf_counter() - t0
        self.step += 1
        return items, reduce_step(results, counts, wall, self.step)

    def train_grpo_step(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """One GRPO step (μ = grpo.inner_epochs optimizer updates) on a batch of scored groups whose
        ``item.advantage`` the driver computed. Returns the step's metrics."""
        items, metrics = self._train_step("grpo", items)
        adv_t = torch.tensor([it.advantage for it in items])
        metrics.update(adv_mean=float(adv_t.mean()), adv_abs_mean=float(adv_t.abs().mean()), completions=len(items))
        return metrics

    def train_sft_step(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """One SFT optimizer step: NLL on the completion (answer) tokens, token-mean over the global batch."""
        return self._train_step("sft", items)[1]

    # ----------------------------------------------------------------------------------------------------------
    def completion_logprobs(self, items: Sequence[TrainItem], cache_key: str | None = None) -> list[list[float]]:
        """Per-token log-probs of each completion under the current learner policy (e.g. to probe a weight sync).
        ``cache_key``: these exact items come again under this key (the probe); the workers keep their inputs."""
        items = self._prepare(items)
        shards, num_micro = self._shard(items)
        outs = self._run("completion_logprobs", shards, num_micro, cache_key)
        flat = [row for o in outs for row in o]
        return flat[: len(items)]

    def get_weights(self, mode: str = "merged") -> dict[str, torch.Tensor]:
        """{hub name: tensor} for ``vllm ... model.load_weights``: 'merged' (LoRA folded into the base weights of
        the targeted layers) or 'adapter' (the LoRA A/B tensors, hub-prefixed)."""
        import ray

        outs = ray.get([w.get_weights.remote(mode) for w in self.workers])
        return outs[0]

    def prepare_weights(self, mode: str, version: int) -> list[Any]:
        """Collective transport: every rank gathers, rank 0 keeps them packed; returns the receivers' metadata."""
        import ray

        return ray.get([w.prepare_weights.remote(mode, version) for w in self.workers])[0]

    def sync_half(self, transport: str, mode: str, version: int, probe: TrainItem) -> tuple[Any, list[float]]:
        """The learner's half of a sync in one round trip (:meth:`LearnerWorker.sync_half`): (the weights as
        ``transport`` hands them to the rollout actors, the probe completion's log-probs they must reproduce)."""
        return self.submit_sync_half(transport, mode, version, probe)()

    def submit_sync_half(self, transport: str, mode: str, version: int, probe: TrainItem
                         ) -> Callable[[], tuple[Any, list[float]]]:
        """Send :meth:`sync_half` to the workers and return a function that waits for its result. The workers run
        calls in the order they were sent, so the weights are those of every step sent before and of none after:
        the driver may send the next step right away and wait for the sync's result on another thread."""
        import ray

        shards, num_micro = self._shard(self._prepare([probe]))
        refs = [w.sync_half.remote(transport, mode, version, s, num_micro) for w, s in zip(self.workers, shards)]

        def result() -> tuple[Any, list[float]]:
            weights, probe_lps = ray.get(refs)[0]
            return (weights[0] if transport == "object_store" else weights), list(probe_lps[0])

        return result

    @property
    def sender(self) -> Any:
        """Learner rank 0's actor handle: rank 0 of the weight-broadcast group."""
        return self.workers[0]

    def save_checkpoint(self, path: str, client_state: dict[str, Any] | None = None) -> str:
        """Atomic checkpoint (see polyaudio_rl/core/checkpoint.py); ``client_state`` is the caller's data position etc."""
        import ray

        meta = {"stage": self.stage, "model_path": self.model_path, "zero_stage": self.cfg.learner.zero_stage}
        outs = ray.get([w.save_checkpoint.remote(str(path), client_state or {}, meta) for w in self.workers])
        return outs[0]

    def fingerprint(self) -> float:
        import ray

        return ray.get([w.adapter_fingerprint.remote() for w in self.workers])[0]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=60)
        except Exception:  # noqa: BLE001 - a dead worker must not block the cleanup below
            pass
        for w in self.workers:
            ray.kill(w)
        remove_placement_group(self.pg)
        self.workers = []
