"""One data-parallel learner rank as a Ray actor: the PEFT policy inside a DeepSpeed engine.

:class:`actors.learner.Learner` (the driver-side handle) starts one :class:`LearnerWorker` per rank in a placement
group and calls its methods step by step. Each worker builds its shard's micro-batches
(:mod:`polyaudio_rl.core.batching`), runs the GRPO or SFT loss (:mod:`polyaudio_rl.core.grpo_loss`) through DeepSpeed,
and returns its sums for :func:`actors.learner_metrics.reduce_step`. The weight-sync methods come from
:class:`actors.weight_transport.WeightSender`.

A worker's loss is its share of the global loss (global token / sequence counts, ``GlobalCounts``) times the world
size, because DeepSpeed averages gradients over the data-parallel ranks: the update is the same for 1, 2 or 8 workers.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Sequence

import torch

from polyaudio_rl.core.config import Config
from polyaudio_rl.core.net import free_port
from polyaudio_rl.core.batching import TrainItem, build_microbatches, encode_prompts, prompt_embeddings
from polyaudio_rl.core.grpo_loss import GlobalCounts, grpo_microbatch_loss, sft_microbatch_loss
from polyaudio_rl.core.policy_forward import token_logprobs, train_mode
from polyaudio_rl.core.prompts import MultiAudioPrompt, prompt_from_arrays

from .learner_metrics import worker_result
from .lr_schedule import lr_lambda
from .weight_transport import WeightSender

STAGES = ("grpo", "sft")
_GRPO_SUMS = ("loss", "pg_loss_sum", "kl_sum", "clipped_tokens", "ratio_sum", "ratio_max", "tokens", "entropy_sum",
              "is_weight_sum")


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed engine's config: ZeRO stage, clipping and precision from ``learner`` / ``model``; gradient
    accumulation is driven by the worker (``set_gradient_accumulation_boundary``), so DeepSpeed's own is 1."""
    return {
        "train_micro_batch_size_per_gpu": cfg.learner.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.learner.grad_clip,
        "zero_optimization": {"stage": cfg.learner.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class LearnerWorker(WeightSender):
    """One data-parallel rank: the PEFT policy inside a DeepSpeed engine. Created by :class:`actors.learner.Learner`."""

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

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self, master_addr: str, master_port: int, resume_from: str | None = None,
              init_adapter: str | None = None, total_steps: int = 0) -> dict[str, Any]:
        """Join the process group, load the policy (``resume_from``: this stage's state; ``init_adapter``: another
        stage's adapter, SFT → GRPO; both on a resume of a stage that started from one), keep the KL reference's
        weights (``grpo.kl_reference=init``: ``init_adapter``'s), build the DeepSpeed engine and restore the
        training state when resuming."""
        backend = self._init_distributed(master_addr, master_port)
        start = init_adapter if self._kl_to_start() else None
        self._load_policy(start or resume_from or init_adapter)
        self.start_weights = ({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
                              if start else None)
        if start and resume_from:
            from polyaudio_rl.core import checkpoint

            checkpoint.load_adapter_weights(resume_from, self.model)
        params = self._build_engine(total_steps)
        self._warm_up()
        self.step = 0
        client_state: dict[str, Any] = {}
        if resume_from:
            from polyaudio_rl.core import checkpoint

            state = checkpoint.restore_training_state(resume_from, self.engine, self.model, self.rank)
            self.step, client_state = state["step"], state["client_state"]
        trainable = sum(p.numel() for p in params)
        return {"rank": self.rank, "trainable_params": trainable, "step": self.step, "client_state": client_state,
                "backend": backend, "device": str(self.device)}

    def _kl_to_start(self) -> bool:
        """Whether the KL reference is the adapter this GRPO stage started from (``grpo.kl_reference=init``)."""
        g = self.cfg.grpo
        return self.stage == "grpo" and g.kl_coef > 0 and g.kl_reference == "init"

    def _init_distributed(self, master_addr: str, master_port: int) -> str:
        """torch.distributed for this rank (gloo on CPU, NCCL on GPUs unless ``learner.backend`` says); the backend."""
        import deepspeed

        lc = self.cfg.learner
        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        )
        use_gpu = lc.use_gpu and torch.cuda.is_available()
        backend = lc.backend if lc.backend != "auto" else ("nccl" if use_gpu else "gloo")
        if use_gpu:
            torch.cuda.set_device(0)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        return backend

    def _load_policy(self, adapter_dir: str | None) -> None:
        """The processor and the base model with LoRA (the same init on every rank), its adapter from ``adapter_dir``."""
        from polyaudio_rl.core import checkpoint
        from polyaudio_rl.core.model import DTYPES, add_lora, load_model, load_processor

        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same LoRA init on every rank
        self.processor = load_processor(self.model_path)
        model = load_model(self.model_path, dtype=cfg.model.dtype)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        self.model = add_lora(model, cfg.model.lora, freeze_audio=cfg.model.freeze_audio_encoder)
        if adapter_dir:
            checkpoint.load_adapter_weights(adapter_dir, self.model)
        self.dtype = DTYPES[cfg.model.dtype]

    def _build_engine(self, total_steps: int) -> list[torch.nn.Parameter]:
        """AdamW on the trainable parameters with this stage's LR schedule, inside DeepSpeed; the parameters."""
        import deepspeed

        cfg = self.cfg
        lr = cfg.grpo.lr if self.stage == "grpo" else cfg.sft.lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.learner.weight_decay)
        schedule = cfg.sft.lr_schedule if self.stage == "sft" else cfg.grpo.lr_schedule
        factor = lr_lambda(cfg.learner.warmup_steps, schedule, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, config=deepspeed_config(cfg),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        )
        self._train_mode()
        # a forward is deterministic unless a dropout is active in training mode (then the proximal log-probs of
        # grpo.is_correction need their own pass)
        self._stochastic = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training
                               for m in self.engine.module.modules())
        return params

    def _warm_up(self) -> None:
        """One-time set-up paid here, while the rollout engines boot, instead of in the first step: PEFT's
        adapter-status walk (the reference pass's disable_adapter fills Python's ABC subclass caches on its first
        walk) and, with the prompt cache, the processor's and audio encoder's first calls."""
        self.model.get_model_status()
        if self.cfg.learner.uses_prompt_cache:
            from polyaudio_rl.core.prompt_cache import PromptCache

            self.prompts = PromptCache(self.cfg.learner.prompt_cache_mb)
            self._warm_up_inputs()

    def _warm_up_inputs(self) -> None:
        """Encode and embed one short tone, kept nowhere: the feature extractor's and the audio encoder's first calls
        set up their kernels and caches. No weights, optimizer state or RNG are touched (eval mode, no grad)."""
        import numpy as np

        t = np.arange(8000, dtype=np.float32) / 16000
        tone = prompt_from_arrays("learner-warm-up", "Warm-up.", [0.1 * np.sin(2 * np.pi * 440 * t)], self.processor)
        (enc,) = encode_prompts([tone], self.processor)
        if self._embed_model() is not None:
            prompt_embeddings(self._embed_model(), [enc], self.processor.tokenizer.pad_token_id)

    # ------------------------------------------------------------------------------------------------ inputs
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
                      "prep_s": time.perf_counter() - t0}  # reported with the step's result
        return [mb.to(self.device, self.dtype) for mb in mbs]

    def prefetch(self, prompts: list[MultiAudioPrompt]) -> None:
        """Encode (and embed) ``prompts`` into the prompt cache now, so the step that trains on them finds them
        there (:meth:`actors.learner.Learner.prefetch`)."""
        if self.prompts is not None:
            self.prompts.encode(prompts, self.processor, self._embed_model())

    def _train_mode(self) -> None:
        train_mode(self.engine.module, self.cfg.model.freeze_audio_encoder)

    @torch.no_grad()
    def _nograd_logprobs(self, mbs: Sequence[Any], reference: bool) -> list[torch.Tensor]:
        """Each micro-batch's token log-probs in eval mode, under the policy or the KL ``reference``
        (:func:`polyaudio_rl.core.model.reference_policy`): one mode switch and one reference swap for all of them
        (each walks the whole model)."""
        from polyaudio_rl.core.model import reference_policy

        if not mbs:
            return []
        module = self.engine.module
        module.eval()
        try:
            with reference_policy(module, self.start_weights) if reference else contextlib.nullcontext():
                return [token_logprobs(module, mb)[0] for mb in mbs]
        finally:
            self._train_mode()

    # ------------------------------------------------------------------------------------------------ steps
    def grpo_step(self, items: list[TrainItem], counts: GlobalCounts, num_micro: int) -> dict[str, Any]:
        """μ = grpo.inner_epochs optimizer updates on this rank's shard (items carry their advantages)."""
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
        epochs = [self._grpo_epoch(mbs, refs, proxs, fused, counts) for _ in range(cfg.inner_epochs)]
        self.step += 1
        return worker_result(epochs, t0, self._prep, self.device)

    def _grpo_epoch(self, mbs: list[Any], refs: list[Any], proxs: list[Any], fused: bool, counts: GlobalCounts
                    ) -> dict[str, float]:
        """One pass over the micro-batches and one optimizer step; this rank's sums (``fused``: the first epoch's
        detached log-probs become the proximal ones)."""
        sums = dict.fromkeys(_GRPO_SUMS, 0.0)
        for i, (mb, ref, prox) in enumerate(zip(mbs, refs, proxs)):
            self.engine.set_gradient_accumulation_boundary(i == len(mbs) - 1)
            logp, ent = token_logprobs(self.engine, mb, with_entropy=True)
            if fused and prox is None:
                prox = proxs[i] = logp.detach()
            loss, st = grpo_microbatch_loss(logp, mb, ref, self.cfg.grpo, counts, prox_logp=prox)
            self.engine.backward(loss * self.world)
            sums["loss"] += float(loss.detach())
            sums["entropy_sum"] += float((ent * mb.mask).sum())
            for k, v in st.items():
                sums[k] = max(sums[k], v) if k == "ratio_max" else sums[k] + v
        return self._optimizer_step(sums)

    def _optimizer_step(self, sums: dict[str, float]) -> dict[str, float]:
        self.engine.step()
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        sums["lr"] = float(self.engine.get_lr()[0])
        return sums

    def sft_step(self, items: list[TrainItem], counts: GlobalCounts, num_micro: int) -> dict[str, Any]:
        """One optimizer step of NLL on this rank's shard's completion tokens."""
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
        epochs = [self._optimizer_step(sums)]
        self.step += 1
        return worker_result(epochs, t0, self._prep, self.device)

    def completion_logprobs(self, items: list[TrainItem], num_micro: int, cache_key: str | None = None
                            ) -> list[list[float]]:
        """Per-token log-probs of each item's completion under the current policy (collective under ZeRO-3).

        ``cache_key`` (the sync probe): the same items come again under this key, so their micro-batches — the
        processor's features and, with ``learner.cache_audio_embeddings``, the frozen audio encoder's embeddings —
        are built once and kept; only the language model runs again."""
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

    # ------------------------------------------------------------------------------------------------ state
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
