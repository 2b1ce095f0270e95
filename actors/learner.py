"""DeepSpeed learner workers, scheduled by Ray: GRPO and LoRA-SFT steps on a data-parallel worker group.

Why a worker group of Ray actors and not ``ray.train.torch.TorchTrainer``: ``TorchTrainer.fit()`` runs one
``train_loop_per_worker`` to completion, while the RL driver must interleave, step by step, rollouts (vLLM actors),
rewards, a learner update and a weight sync. This module does what Ray Train does for its workers — one actor per
rank in a placement group, MASTER_ADDR/PORT from rank 0, ``torch.distributed`` (gloo on CPU, NCCL on GPUs),
``deepspeed.initialize`` inside each worker — and exposes every step as a method call (the OpenRLHF pattern).

Driver-side API (:class:`Learner`)::

    learner = Learner(cfg, stage="grpo")              # or stage="sft"; resume_from=<checkpoint dir>
    learner = Learner(cfg, stage="grpo", init_adapter=<SFT checkpoint dir>)  # GRPO from the SFT adapter
    metrics = learner.train_grpo_step(items, rewards)  # items: list[TrainItem]; rewards → advantages here
    weights = learner.get_weights("merged")            # {hub name: tensor} for vLLM load_weights
    weights, probe_lps = learner.sync_half(transport, mode, version, probe_item)  # a sync's learner half
    learner.save_checkpoint(path, client_state={...}); learner.shutdown()

Per step the driver shards the completions contiguously (a group's completions stay together, so each prompt is
encoded once), computes the GLOBAL token/sequence counts, and gives every worker the same number of
micro-batches (ZeRO's collectives need equal call counts; a short shard gets zero-weight fillers). Each worker's
loss is its share of the global loss (core_algos.agg_loss with global counts) times the world size, because
DeepSpeed averages gradients over data-parallel ranks: the update is the same for 1, 2 or 8 workers.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from polyaudio_rl.core import core_algos as ca
from polyaudio_rl.core.config import Config
from polyaudio_rl.core.weights import lora_tensors, merged_lora_weights, peft_to_hub
from polyaudio_rl.core.grpo_loss import (
    BatchError,
    GlobalCounts,
    TrainItem,
    build_microbatches,
    encode_prompts,
    grpo_microbatch_loss,
    prompt_embeddings,
    sft_microbatch_loss,
    token_logprobs,
    train_mode,
)
from polyaudio_rl.core.cluster import connect_ray
from polyaudio_rl.core.net import free_port
from polyaudio_rl.core.prompts import MultiAudioPrompt, prompt_from_arrays

STAGES = ("grpo", "sft")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lr_factor(warmup: int, schedule: str, total: int):
    """The LR multiplier of optimizer step ``s`` (0-based): linear warm-up over ``warmup`` steps, then constant, or a
    linear / cosine decay that reaches 0 after step ``total`` (no decay when ``total`` is unknown, 0)."""
    def f(s: int) -> float:
        w = min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
        if schedule == "constant" or total <= 0 or s < warmup:
            return w
        frac = min(1.0, (s + 1 - warmup) / max(1, total - warmup))
        return w * ((1.0 - frac) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac)))
    return f


class LearnerWorker:
    """One data-parallel rank: the PEFT policy inside a DeepSpeed engine. Created by :class:`Learner`."""

    def __init__(self, cfg: Config, stage: str, rank: int, world_size: int, model_path: str):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.cfg, self.stage, self.rank, self.world = cfg, stage, rank, world_size
        self.model_path = model_path
        from polyaudio_rl.core.procguard import guard_process_tree

        guard_process_tree()  # anything this worker starts ends with it, however it dies
        if cfg.learner.cpu_affinity:  # disjoint cores for rollouts and training (benchmarks/pipeline.py)
            os.sched_setaffinity(0, set(cfg.learner.cpu_affinity))
        threads = cfg.learner.torch_threads or max(1, int(cfg.learner.cpus_per_worker))
        torch.set_num_threads(threads)
        self.engine = None
        self._mb_cache: dict[Any, list] = {}  # completion_logprobs(cache_key=...): the probe's built micro-batches
        self.prompts = None  # the PromptCache (setup), None when off or under ZeRO-3

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port("")  # reachable from other nodes

    # ----------------------------------------------------------------------------------------------------------
    def setup(self, master_addr: str, master_port: int, resume_from: str | None = None,
              init_adapter: str | None = None, total_steps: int = 0) -> dict[str, Any]:
        import deepspeed

        from polyaudio_rl.core import checkpoint
        from polyaudio_rl.core.model import DTYPES, add_lora, load_model, load_processor

        cfg = self.cfg
        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        )
        use_gpu = cfg.learner.use_gpu and torch.cuda.is_available()
        backend = cfg.learner.backend if cfg.learner.backend != "auto" else ("nccl" if use_gpu else "gloo")
        if use_gpu:
            torch.cuda.set_device(0)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)

        torch.manual_seed(cfg.seed)  # the same LoRA init on every rank
        self.processor = load_processor(self.model_path)
        model = load_model(self.model_path, dtype=cfg.model.dtype)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        self.model = add_lora(model, cfg.model.lora, freeze_audio=cfg.model.freeze_audio_encoder)
        if resume_from or init_adapter:  # resume: this stage's state; init: another stage's adapter (SFT → GRPO)
            checkpoint.load_adapter_weights(resume_from or init_adapter, self.model)
        self.dtype = DTYPES[cfg.model.dtype]

        lr = cfg.grpo.lr if self.stage == "grpo" else cfg.sft.lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.learner.weight_decay)
        factor = lr_factor(cfg.learner.warmup_steps, cfg.sft.lr_schedule if self.stage == "sft" else cfg.grpo.lr_schedule,
                           total_steps)

        def schedule(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, factor)

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.learner.micro_batch_size,
            "gradient_accumulation_steps": 1,  # accumulation is driven here (set_gradient_accumulation_boundary)
            "gradient_clipping": cfg.learner.grad_clip,
            "zero_optimization": {"stage": cfg.learner.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
            "fp16": {"enabled": cfg.model.dtype == "float16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
        )
        self._train_mode()
        # PEFT's disable_adapter() (the reference pass) first walks the model's layer status; the first walk fills
        # Python's ABC subclass caches (~0.3 s here, once per process): pay it now, while the rollout engines boot
        self.model.get_model_status()
        # a forward is deterministic unless a dropout is active in training mode (then the proximal log-probs of
        # grpo.is_correction need their own pass)
        self._stochastic = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training
                               for m in self.engine.module.modules())
        if cfg.learner.uses_prompt_cache:
            from polyaudio_rl.core.prompt_cache import PromptCache

            self.prompts = PromptCache(cfg.learner.prompt_cache_mb)
            self._warm_up_inputs()
        self.step = 0
        client_state: dict[str, Any] = {}
        if resume_from:
            state = checkpoint.restore_training_state(resume_from, self.engine, self.model, self.rank)
            self.step, client_state = state["step"], state["client_state"]
        trainable = sum(p.numel() for p in params)
        return {"rank": self.rank, "trainable_params": trainable, "step": self.step, "client_state": client_state,
                "backend": backend, "device": str(self.device)}

    def _warm_up_inputs(self) -> None:
        """Encode and embed one short tone, kept nowhere: the feature extractor's and the audio encoder's first calls
        set up their kernels and caches (~0.2 s here, once per process) at setup, while the rollout engines boot,
        instead of in the first step. No weights, optimizer state or RNG are touched (eval mode, no grad)."""
        import numpy as np

        t = np.arange(8000, dtype=np.float32) / 16000
        tone = prompt_from_arrays("learner-warm-up", "Warm-up.", [0.1 * np.sin(2 * np.pi * 440 * t)], self.processor)
        (enc,) = encode_prompts([tone], self.processor)
        if self._embed_model() is not None:
            prompt_embeddings(self._embed_model(), [enc], self.processor.tokenizer.pad_token_id)

    # ----------------------------------------------------------------------------------------------------------
    def _embed_model(self) -> Any:
        cache = self.cfg.learner.cache_audio_embeddings and self.cfg.model.freeze_audio_encoder
        return self.engine.module if cache else None

    def _microbatches(self, items: Sequence[TrainItem], num_micro: int):
        t0, before = time.perf_counter(), (self.prompts.hits, self.prompts.misses) if self.prompts else (0, 0)
        mbs = build_microbatches(items, self.processor, self.cfg.learner.micro_batch_size, num_micro,
                                 embed_model=self._embed_model(), cache=self.prompts,
                                 share_prompts=self.cfg.learner.share_prompts)
        after = (self.prompts.hits, self.prompts.misses) if self.prompts else (0, len({id(it.prompt) for it in items}))
        self._prep = {"prompts_cached": after[0] - before[0], "prompts_encoded": after[1] - before[1],
                      "prep_s": time.perf_counter() - t0}  # what the step's _reduce reports
        return [mb.to(self.device, self.dtype) for mb in mbs]

    def prefetch(self, prompts: list[MultiAudioPrompt]) -> None:
        """Encode (and embed) ``prompts`` into the prompt cache now, so the step that trains on them finds them
        there (:meth:`Learner.prefetch`)."""
        if self.prompts is not None:
            self.prompts.encode(prompts, self.processor, self._embed_model())

    def _train_mode(self) -> None:
        train_mode(self.engine.module, self.cfg.model.freeze_audio_encoder)

    @torch.no_grad()
    def _nograd_logprobs(self, mbs: Sequence[Any], reference: bool) -> list[torch.Tensor]:
        """Each micro-batch's token log-probs in eval mode, under the policy or (``reference``) the base model: one
        mode switch and one adapter toggle for all of them (each walks the whole model: ~10 ms apiece here)."""
        if not mbs:
            return []
        module = self.engine.module
        module.eval()
        try:
            with module.disable_adapter() if reference else contextlib.nullcontext():
                return [token_logprobs(module, mb)[0] for mb in mbs]
        finally:
            self._train_mode()

    def grpo_step(self, items: list[TrainItem], counts: GlobalCounts, num_micro: int) -> dict[str, Any]:
        cfg = self.cfg.grpo
        t0 = time.perf_counter()
        mbs = self._microbatches(items, num_micro)
        refs = self._nograd_logprobs(mbs, reference=True) if cfg.kl_coef > 0 else [None] * len(mbs)
        # items without rollout log-probs are on-policy: the current policy is the behaviour policy
        partial = [mb for mb in mbs if not bool(mb.has_old.all())]
        for mb, cur in zip(partial, self._nograd_logprobs(partial, reference=False)):
            mb.old_logp = torch.where(mb.has_old.to(cur.device)[:, None], mb.old_logp, cur)
        # the proximal policy (these weights, before the update) for an off-policy correction (grpo.is_correction):
        # without dropout the first inner epoch's own forward gives it, detached; with dropout a separate pass
        fused = cfg.is_correction != "none" and not self._stochastic
        proxs = (self._nograd_logprobs(mbs, reference=False) if cfg.is_correction != "none" and not fused
                 else [None] * len(mbs))
        self._train_mode()
        epochs = []
        for _ in range(cfg.inner_epochs):
            sums = {"loss": 0.0, "pg_loss_sum": 0.0, "kl_sum": 0.0, "clipped_tokens": 0.0, "ratio_sum": 0.0,
                    "ratio_max": 0.0, "tokens": 0.0, "entropy_sum": 0.0, "is_weight_sum": 0.0}
            for i, (mb, ref, prox) in enumerate(zip(mbs, refs, proxs)):
                self.engine.set_gradient_accumulation_boundary(i == len(mbs) - 1)
                logp, ent = token_logprobs(self.engine, mb, with_entropy=True)
                if fused and prox is None:
                    prox = proxs[i] = logp.detach()
                loss, st = grpo_microbatch_loss(logp, mb, ref, cfg, counts, prox_logp=prox)
                self.engine.backward(loss * self.world)
                sums["loss"] += float(loss.detach())
                sums["entropy_sum"] += float((ent * mb.mask).sum())
                for k, v in st.items():
                    sums[k] = max(sums[k], v) if k == "ratio_max" else sums[k] + v
            self.engine.step()
            sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
            sums["lr"] = float(self.engine.get_lr()[0])
            epochs.append(sums)
        self.step += 1
        return {"epochs": epochs, "time_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), **self._prep,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0}

    def sft_step(self, items: list[TrainItem], counts: GlobalCounts, num_micro: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        mbs = self._microbatches(items, num_micro)
        self._train_mode()
        sums = {"loss": 0.0, "nll_sum": 0.0, "tokens": 0.0}
        for i, mb in enumerate(mbs):
            self.engine.set_gradient_accumulation_boundary(i == len(mbs) - 1)
            logp, _ = token_logprobs(self.engine, mb)
            loss, st = sft_microbatch_loss(logp, mb, counts)
            self.engine.backward(loss * self.world)
            sums["loss"] += float(loss.detach())
            for k, v in st.items():
                sums[k] += v
        self.engine.step()
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        sums["lr"] = float(self.engine.get_lr()[0])
        self.step += 1
        return {"epochs": [sums], "time_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), **self._prep,
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0}

    def completion_logprobs(self, items: list[TrainItem], num_micro: int, cache_key: str | None = None
                            ) -> list[list[float]]:
        """Per-token log-probs of each item's completion under the current policy (collective under ZeRO-3).

        ``cache_key`` (the sync probe): the same items come again under this key, so their micro-batches — the
        processor's features and, with ``learner.cache_audio_embeddings``, the frozen audio encoder's embeddings —
        are built once and kept; only the language model runs again (the probe: ~100 → ~5 ms here)."""
        key = (cache_key, num_micro, tuple(tuple(it.completion_ids) for it in items)) if cache_key else None
        mbs = self._mb_cache.get(key) if key else None
        if mbs is None:
            mbs = self._microbatches(items, num_micro)
            if key:
                self._mb_cache[key] = mbs
        out = []
        for mb, logp in zip(mbs, self._nograd_logprobs(mbs, reference=False)):
            logp = logp.float().cpu()
            for row in range(logp.shape[0]):
                m = mb.mask[row].cpu() > 0
                if m.any():
                    out.append(logp[row][m].tolist())
        return out

    # ----------------------------------------------------------------------------------------------------------
    def get_weights(self, mode: str) -> dict[str, torch.Tensor] | None:
        """Collective. Rank 0 returns {hub name: tensor}: the LoRA tensors ('adapter') or, for 'merged', every
        weight the training changes with LoRA folded in (W + s·B·A, un-padded, hub layout)."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        gathered = {n: safe_get_full_fp32_param(p) for n, p in self.model.named_parameters() if p.requires_grad}
        if mode == "adapter":
            out = lora_tensors(gathered.items())
        elif mode == "merged":
            zero3 = self.cfg.learner.zero_stage == 3
            out = merged_lora_weights(self.model, dtype=self.dtype,
                                      gather=lambda ps: deepspeed.zero.GatheredParameters(ps, enabled=zero3))
            for n, t in gathered.items():  # other trainable tensors (audio encoder, when unfrozen)
                if "lora_" not in n and t is not None:
                    out[peft_to_hub(n)] = t.detach().to(self.dtype).cpu().clone()
        else:
            raise ValueError(f"get_weights: mode must be 'adapter' or 'merged', got {mode!r}")
        return out if self.rank == 0 else None

    def get_weights_ref(self, mode: str) -> list[Any] | None:
        """Collective. Rank 0 puts :meth:`get_weights` into the object store and returns ``[ref]`` (a list, so the
        caller receives the reference, not the tensors): the rollout actors fetch the weights from there directly."""
        import ray

        out = self.get_weights(mode)
        return [ray.put(out)] if self.rank == 0 else None

    # -- collective transport (actors/collective.py): rank 0 is rank 0 of the weight-broadcast group -------------
    def prepare_weights(self, mode: str, version: int) -> list[Any] | None:
        """Collective. Rank 0 keeps :meth:`get_weights` of policy ``version`` packed for :meth:`send_weights` and
        returns the metadata the receivers allocate from (names, shapes, dtypes: small)."""
        from .collective import pack

        out = self.get_weights(mode)
        if self.rank != 0:
            return None
        meta, buffers = pack(out)
        self._prepared = (version, out, meta, buffers)
        return meta

    def sync_half(self, transport: str, mode: str, version: int, probe: list[TrainItem], num_micro: int
                  ) -> tuple[Any, list[list[float]]]:
        """Collective. The learner's half of a weight sync in one call: the weights as ``transport`` hands them over
        (``driver``: the tensors; ``object_store``: ``[ref]``; ``collective``: the receivers' metadata, rank 0 keeps
        the packed tensors) and the probe's log-probs under them (its inputs built once: ``cache_key``)."""
        if transport == "driver":
            weights = self.get_weights(mode)
        elif transport == "collective":
            weights = self.prepare_weights(mode, version)
        else:
            weights = self.get_weights_ref(mode)
        return weights, self.completion_logprobs(probe, num_micro, cache_key="sync-probe")

    def join_weights_group(self, host: str, port: int, world: int, backend: str, timeout_s: float) -> None:
        from .collective import WeightGroup

        old = getattr(self, "_weight_group", None)
        if old is not None:
            old.close()
        self._weight_group = WeightGroup(host, port, 0, world, backend, timeout_s)

    def send_weights(self, version: int) -> dict[str, float]:
        """Broadcast the prepared weights of ``version`` to the group (the rollout actors receive at the same time)."""
        from .collective import nbytes

        prepared = getattr(self, "_prepared", None)
        if prepared is None or prepared[0] != version:
            raise RuntimeError(f"send_weights: policy version {version} is not prepared "
                               f"(have {prepared[0] if prepared else None})")
        t = time.perf_counter()
        group = self._weight_group
        self._weight_group.broadcast({d: b.to(group.device) for d, b in prepared[3].items()})
        return {"bytes": float(nbytes(prepared[2])), "seconds": time.perf_counter() - t}

    def prepared_weights_ref(self, version: int) -> list[Any]:
        """``[ref]`` to the prepared weights of ``version`` in the object store: for a rollout actor that restarted
        after the broadcast (it missed it)."""
        import ray

        prepared = getattr(self, "_prepared", None)
        if prepared is None or prepared[0] != version:
            raise RuntimeError(f"prepared_weights_ref: policy version {version} is not prepared "
                               f"(have {prepared[0] if prepared else None})")
        return [ray.put(prepared[1])]

    def save_checkpoint(self, path: str, client_state: dict[str, Any], meta: dict[str, Any]) -> str | None:
        from polyaudio_rl.core import checkpoint

        p = checkpoint.save_checkpoint(path, self.engine, self.model, self.rank, self.step, client_state, meta)
        return str(p) if p else None

    def adapter_fingerprint(self) -> float:
        """Σ|w| over trainable fp32 masters (collective): cheap state comparison for tests."""
        from deepspeed.utils import safe_get_full_fp32_param

        return float(sum(safe_get_full_fp32_param(p).double().abs().sum() for p in self.model.parameters()
                         if p.requires_grad))

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


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

    def train_grpo_step(self, items: Sequence[TrainItem], rewards: Sequence[float] | None = None) -> dict[str, float]:
        """One GRPO step (μ = grpo.inner_epochs optimizer updates) on a batch of scored groups.

        With ``rewards`` (one per item, aligned) the advantages are computed here from ``item.group_id`` with
        ``grpo.advantage``, after dynamic sampling (``grpo.dynamic_sampling``) dropped zero-spread groups;
        without, ``item.advantage`` is used as given. Returns the step's metrics.
        """
        if self.stage != "grpo":
            raise RuntimeError(f"this learner was built for stage {self.stage!r}, not grpo")
        items = self._prepare(items)
        if not items:
            raise BatchError("train_grpo_step: empty batch")
        metrics: dict[str, float] = {}
        if rewards is not None:
            if len(rewards) != len(items):
                raise BatchError(f"train_grpo_step: {len(rewards)} rewards for {len(items)} completions")
            missing = [it.prompt.sample_id for it in items if it.group_id is None]
            if missing:
                raise BatchError(f"train_grpo_step: completions without group_id (samples {missing[:3]})")
            groups = [it.group_id for it in items]
            r = torch.as_tensor(list(rewards), dtype=torch.float32)
            metrics["reward_mean"] = float(r.mean())
            if self.cfg.grpo.dynamic_sampling:
                keep, frac = ca.zero_spread_filter(r, groups, self.cfg.grpo.zero_spread_tol)
                metrics["dropped_group_frac"] = frac
                items = [it for it, k in zip(items, keep.tolist()) if k]
                r = r[keep]
                groups = [g for g, k in zip(groups, keep.tolist()) if k]
                if not items:
                    metrics.update(skipped=1.0, step=float(self.step))
                    return metrics
            adv = ca.compute_advantages(r, groups, self.cfg.grpo.advantage, self.cfg.grpo.eps)
            items = [replace(it, advantage=float(a)) for it, a in zip(items, adv.tolist())]
        counts = self._counts(items)
        shards, num_micro = self._shard(items)
        t0 = time.perf_counter()
        results = self._run("grpo_step", shards, counts, num_micro)
        wall = time.perf_counter() - t0
        self.step += 1
        adv_t = torch.tensor([it.advantage for it in items])
        metrics.update(self._reduce(results, counts, wall))
        metrics.update(adv_mean=float(adv_t.mean()), adv_abs_mean=float(adv_t.abs().mean()), completions=len(items))
        return metrics

    def train_sft_step(self, items: Sequence[TrainItem]) -> dict[str, float]:
        """One SFT optimizer step: NLL on the completion (answer) tokens, token-mean over the global batch."""
        if self.stage != "sft":
            raise RuntimeError(f"this learner was built for stage {self.stage!r}, not sft")
        items = self._prepare(items)
        if not items:
            raise BatchError("train_sft_step: empty batch")
        counts = self._counts(items)
        shards, num_micro = self._shard(items)
        t0 = time.perf_counter()
        results = self._run("sft_step", shards, counts, num_micro)
        self.step += 1
        return self._reduce(results, counts, time.perf_counter() - t0)

    def _reduce(self, results: list[dict[str, Any]], counts: GlobalCounts, wall: float) -> dict[str, float]:
        n_ep = len(results[0]["epochs"])
        tok = max(counts.tokens, 1)
        per_epoch = []
        for e in range(n_ep):
            eps = [r["epochs"][e] for r in results]
            s = {k: sum(x.get(k, 0.0) for x in eps) for k in eps[0] if k not in ("grad_norm", "lr", "ratio_max")}
            s["grad_norm"], s["lr"] = eps[0]["grad_norm"], eps[0]["lr"]
            s["ratio_max"] = max(x.get("ratio_max", 0.0) for x in eps)
            per_epoch.append(s)
        first, last = per_epoch[0], per_epoch[-1]
        m = {
            "loss": first["loss"],
            "loss_last_epoch": last["loss"],
            "grad_norm": first["grad_norm"],
            "lr": first["lr"],
            "tokens": float(counts.tokens),
            "sequences": float(counts.seqs),
            "step": float(self.step),
            "time_s": wall,
            "tokens_per_s": counts.tokens * n_ep / wall if wall > 0 else 0.0,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in results),
            # prompts whose inputs came from the prompt cache (prefetched or met before) / were built in the step
            "prompts_cached": float(sum(r["prompts_cached"] for r in results)),
            "prompts_encoded": float(sum(r["prompts_encoded"] for r in results)),
            "prep_s_max": max(r["prep_s"] for r in results),
            "peak_gpu_mb_max": max(r["peak_gpu_mb"] for r in results),
            **{f"peak_rss_mb_w{i}": r["peak_rss_mb"] for i, r in enumerate(results)},
            **({f"peak_gpu_mb_w{i}": r["peak_gpu_mb"] for i, r in enumerate(results)} if results[0]["peak_gpu_mb"] else {}),
        }
        if "pg_loss_sum" in first:
            m.update(
                pg_loss=first["pg_loss_sum"] / tok,
                kl=first["kl_sum"] / tok,
                entropy=first["entropy_sum"] / tok,
                clip_frac=sum(e["clipped_tokens"] for e in per_epoch) / (tok * n_ep),
                clip_frac_last_epoch=last["clipped_tokens"] / tok,
                ratio_mean=sum(e["ratio_sum"] for e in per_epoch) / (tok * n_ep),
                ratio_max=max(e["ratio_max"] for e in per_epoch),
                is_weight_mean=sum(e.get("is_weight_sum", 0.0) for e in per_epoch) / (tok * n_ep),
                grad_norm_last_epoch=last["grad_norm"],
            )
        else:
            m["nll"] = first["nll_sum"] / tok
        return m

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
