"""The GRPO loop: Ray Data → rollout actors → reward actors → learner workers → weight sync, pipelined.

One GRPO step *b* trains on one :class:`RolloutBatch`:

1. **data**     ``grpo.prompts_per_step`` prompts from the :class:`~polyaudio_rl.data_stream.PromptStream` (decoded
   ahead in its own thread, so this is a queue read);
2. **generate** the rollout pool samples G = ``grpo.group_size`` completions per prompt (token ids, log-probs, and
   the policy version that sampled them — one version per group: an actor runs a generate call and a sync one
   after the other, never interleaved);
3. **reward**   the reward pool scores the batch as soon as its completions exist; unscored completions (a judge
   that is down) are dropped with their group and counted — never trained on a made-up reward — and the run stops
   when their fraction exceeds ``reward.max_unscored_fraction``;
4. **train**    here, in the driver: group advantages (``grpo.advantage``) and dynamic sampling from
   :mod:`polyaudio_rl.core.core_algos`, then the learner's μ = ``grpo.inner_epochs`` clipped-surrogate updates;
5. **sync**     the learner hands the new weights to every rollout actor — through the object store (the driver
   passes only the reference) or in one broadcast from learner rank 0 (``collective``: gloo on CPU, NCCL on GPU;
   the driver passes only names and shapes), ``rollout.sync_transport`` — and each loads them as policy version
   v+1, verified against the learner's own log-probs of a fixed probe (a sync that did not take effect raises).

Steps 1–3 make a batch as a future (one worker, so batches are made in step order), steps 4–5 run in the caller's
thread. The trainer keeps the batches of steps up to b + k + 1 in flight, ``grpo.max_policy_lag`` = k: each waits at
the *version gate* (a condition on the shared :class:`~polyaudio_rl.core.policy_version.PolicyVersion`, woken when
a sync is sent) until the rollout actors serve a policy at most k versions older than the learner's when it trains
on that batch. k = 0 is the synchronous loop (the batch of step b is generated after step b−1's sync — the same
data, seeds and versions as a loop without futures); with k ≥ 1, generation and scoring of the next batches overlap
training, and the rollout side of each sync (learner half, push, verification) is a future the next sync waits for.
A group older than k versions is dropped and counted (``groups/dropped_stale``; the gate makes this a safety net).
A checkpoint is a pipeline barrier: the batch after a checkpoint step is sampled from the checkpoint's own policy,
so ``--resume`` continues exactly as the uninterrupted run did, whatever k. A stop (SIGTERM) at another step adds a
checkpoint the uninterrupted run did not have, while up to k batches after it are already sampled from older
policies: that checkpoint also holds those batches (:meth:`GRPODriver.inflight_batches`: token ids, behaviour
log-probs, texts, how many versions behind), and the resumed run replays them — the same prompts, re-read from the
stream, and completions, scored again — instead of sampling them from the checkpoint's policy.

Metrics per step (docs/metrics.md) go to ``RUN_DIR/metrics.jsonl``; spans of every pool go to a
:class:`~polyaudio_rl.core.timeline.Timeline` (``RUN_DIR/timeline.json``).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .core import core_algos as ca
from .core.config import Config
from .core.batching import TrainItem
from .core.deaths import WorkerDied, actor_id_of, dies_as
from .core.policy_version import PolicyVersion
from .core.timeline import Timeline
from .data_stream import PromptItem, PromptStream
from .inflight import batch_record, replayed_groups


def _quietly(fn: Callable[[], Any], what: str) -> None:
    """Run a clean-up call; report its error on stderr instead of raising (clean-up must go on)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        print(f"[train] {what}: {exc}", file=sys.stderr)


@dataclass
class StepResult:
    step: int
    metrics: dict[str, Any]
    sample_ids: list[str] = field(default_factory=list)


@dataclass
class RolloutBatch:
    """What the producer hands to the trainer for one step: prompts, their groups, the groups' scores."""

    step: int
    items: list[PromptItem]
    groups: list[Any]  # RolloutGroup, one per item
    scores: Any  # rewards.scorer.BatchScores
    times: dict[str, float]
    end_position: int  # data position after this batch (the resume point once it is trained)


def reward_metrics(batch_scores: Any) -> dict[str, float]:
    """The step's reward figures from :class:`rewards.scorer.BatchScores`: ``reward/<component>`` and
    ``reward/total`` (means over scored completions), ``correctness/<task>`` and ``reward/unscored``."""
    out = {f"reward/{k}": float(v) for k, v in batch_scores.component_means().items()}
    out.update({f"correctness/{t}": float(v) for t, v in batch_scores.per_task_means("correctness").items()})
    out["reward/unscored"] = float(batch_scores.n_unscored)
    return out


def group_advantages(items: list[TrainItem], rewards: list[float], g: Any) -> tuple[list[TrainItem], dict[str, float]]:
    """Group advantages (``grpo.advantage``, with ``g`` the :class:`GRPOConfig`) after dynamic sampling, for items
    aligned with their rewards and grouped by ``item.group_id``: the one place they are computed (the learner takes
    ``item.advantage`` as given). Returns the items that stay, with their advantages, and the filter's metrics."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    gids = [it.group_id for it in items]
    keep, zero_frac = ca.zero_spread_filter(r, gids, g.zero_spread_tol)
    m = {"groups/zero_spread_frac": zero_frac, "learner/reward_mean": float(r.mean())}
    if g.dynamic_sampling:
        m["learner/dropped_group_frac"] = zero_frac
        items = [it for it, k in zip(items, keep.tolist()) if k]
        r, gids = r[keep], [gi for gi, k in zip(gids, keep.tolist()) if k]
    if not items:
        return [], m
    adv = ca.compute_advantages(r, gids, g.advantage, g.eps)
    return [replace(it, advantage=float(a)) for it, a in zip(items, adv.tolist())], m


TOP_LEVEL_LEARNER_METRICS = ("loss", "kl", "clip_frac", "entropy", "grad_norm")


def learner_metric_name(key: str) -> str:
    """The metrics.jsonl name of a learner statistic: the headline ones stay top-level (``loss``, ``kl``, ...),
    names that already have a section (``x/y``) are kept, the rest go under ``learner/``."""
    if "/" in key or key in TOP_LEVEL_LEARNER_METRICS:
        return key
    return f"learner/{key}"


def min_sample_version(batch_step: int, first_step: int, first_version: int, max_lag: int,
                       checkpoint_steps: Sequence[int] = ()) -> int:
    """The oldest policy version the batch of ``batch_step`` may be sampled from.

    The learner trains step b at version V_b = first_version + (b − first_step) (one sync per step). The batch
    may lag by at most ``max_lag`` versions, and never reach back across a checkpoint (a checkpoint step c < b
    requires V_{c+1}, the policy the checkpoint holds)."""
    v_b = first_version + (batch_step - first_step)
    need = v_b - max_lag
    for c in checkpoint_steps:
        if first_step <= c < batch_step:
            need = max(need, first_version + (c + 1 - first_step))
    return need


class GRPODriver:
    """Owns the stream, the rollout and reward pools and the learner for one GRPO run: builds them
    (:meth:`build`), runs the steps, rebuilds from the newest checkpoint after a process died (:meth:`recover`), saves
    checkpoints and shuts everything down (:meth:`shutdown`). ``version`` is the run's policy version: the learner's
    policy, bumped when a sync is sent; the rollout pool serves it once the sync has reached the actors."""

    @classmethod
    def build(cls, cfg: Config, init_adapter: str | None = None, resume: str | None = None) -> GRPODriver:
        """Start the learner (from ``resume``, else ``init_adapter``), the prompt stream at the resumed data
        position, the rollout and the reward pools; joins or starts Ray as the learner does. The rollout pool boots
        its engines in a thread while the learner's workers start (neither needs the other: the start-ups overlap),
        the prompt stream starts decoding as soon as the learner names its data position. A part that fails to start
        takes the started ones down with it."""
        from actors.learner import Learner
        from actors.rollout import RolloutPool
        from rewards.actor import RewardPool

        from .core.cluster import connect_ray
        from .core.model import load_processor, resolve_path

        model_path = resolve_path(cfg.model)
        processor = load_processor(model_path)
        connect_ray(cfg)  # before the pools' threads: both need Ray
        boot = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-boot")
        rollout_boot = boot.submit(RolloutPool, cfg, model_path=model_path)
        boot.shutdown(wait=False)
        parts: list[Any] = []
        try:
            learner = Learner(cfg, stage="grpo", resume_from=resume, init_adapter=init_adapter,
                              total_steps=cls.optimizer_steps(cfg))
            parts.append(learner)
            state = learner.client_state or {}
            stream = PromptStream(cfg.data.pref_dir, model_path, cfg.data, seed=cfg.seed,
                                  position=int(state.get("data_position", 0))).start()
            parts.append(stream)
            rollout = rollout_boot.result()
            parts.append(rollout)
            rewards = RewardPool(cfg.reward, answer_tag=cfg.data.answer_tag)
        except BaseException:
            cls._stop_parts(parts, rollout_boot)
            raise
        driver = cls(cfg, stream, rollout, rewards, learner, processor, version=int(state.get("version", 0)))
        driver.init_adapter, driver.model_path = init_adapter, model_path
        driver.replay(state)
        return driver

    @staticmethod
    def _stop_parts(parts: list[Any], rollout_boot: Future) -> None:
        """Shut down the parts a failed :meth:`build` started, the rollout pool too once its boot has ended (an
        error of the boot itself is the build's error, or follows it)."""
        try:
            pool = rollout_boot.result()
        except BaseException:  # noqa: BLE001 - the error raised in build is the one reported
            pool = None
        if pool is not None and pool not in parts:
            parts.append(pool)
        for part in reversed(parts):
            _quietly(part.close if isinstance(part, PromptStream) else part.shutdown, "shutdown")

    @staticmethod
    def optimizer_steps(cfg: Config) -> int:
        """Optimizer steps of the whole run: where a decaying ``grpo.lr_schedule`` reaches 0."""
        return cfg.grpo.steps * cfg.grpo.inner_epochs

    def __init__(self, cfg: Config, stream: PromptStream, rollout_pool: Any, reward_pool: Any, learner: Any,
                 processor: Any, version: int = 0, timeline: Timeline | None = None):
        from actors.weight_sync import make_probe

        self.cfg = cfg
        self.stream = stream
        self.rollout = rollout_pool
        self.rewards = reward_pool
        self.learner = learner
        self.processor = processor
        self.policy: PolicyVersion = rollout_pool.policy  # the pool's counter: `served` moves when a sync is sent
        self.policy.trained = version
        self.lag = cfg.grpo.max_policy_lag
        self.probe = make_probe(processor, cfg.rollout.probe_tokens)
        self.timeline = timeline or Timeline()
        self.trained_by_step: dict[int, list[str]] = {}  # sample ids whose update is in the current weights
        self.data_position = stream.position  # the resume point: rows of every trained batch
        self.learner_restarts = 0  # recoveries after a death (each rebuilds the learner from a checkpoint)
        self.recoveries: list[dict[str, Any]] = []  # what died, in which phase, rebuilt from which checkpoint
        self.init_adapter: str | None = None  # what a learner restarts from when no checkpoint exists yet
        self.model_path: str | None = None
        self.on_scored: Callable[[int, RolloutBatch, list[TrainItem]], Any] | None = None  # e.g. samples.RolloutSampler
        # step -> a batch sampled before a stop (the checkpoint's client_state["inflight"]), replayed, not sampled again
        self._replay: dict[int, dict[str, Any]] = {}
        # one worker each: batches are made one after the other, in step order; one sync runs at a time
        self._producer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-producer")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync")
        self._reset_pipeline()

    @property
    def version(self) -> int:
        """The learner's policy version (bumped when a sync is sent)."""
        return self.policy.trained

    def _reset_pipeline(self) -> None:
        self._stop = threading.Event()
        self._batches: dict[int, Future] = {}  # step -> the future of its RolloutBatch, made in step order
        self._sync_future: Future | None = None  # the background sync in flight: its figures, or its error
        self._first: tuple[int, int] | None = None  # (first step, its learner version) of this pipeline
        self._last_end: float | None = None
        self._prep: list[tuple[int, list[Any]]] = []  # (step, prompts) submitted to rollouts, not yet prefetched
        self._prep_lock = threading.Lock()

    @property
    def trained_ids(self) -> list[str]:
        """Every sample id trained on, in order (to prove none is lost or counted twice)."""
        return [sid for step in sorted(self.trained_by_step) for sid in self.trained_by_step[step]]

    def checkpoint_steps(self) -> list[int]:
        every = self.cfg.learner.checkpoint_every
        return [s for s in range(1, self.cfg.grpo.steps + 1) if (every and s % every == 0) or s == self.cfg.grpo.steps]

    def restore(self, learner: Any, stream: PromptStream, step: int) -> None:
        """Continue with a learner restored at ``step`` and a stream at its data position: updates of later steps
        were lost with the dead learner, so their samples will be trained on again (and counted once)."""
        try:
            self.close()  # batches made for the lost steps are discarded; the new stream re-reads their rows
        except Exception:  # noqa: BLE001 - a push that failed with the old learner is redone by the next sync
            pass
        self.learner, self.stream = learner, stream
        self.data_position = stream.position
        self.trained_by_step = {s: ids for s, ids in self.trained_by_step.items() if s <= step}
        self._reset_pipeline()
        self.replay(getattr(learner, "client_state", None) or {})

    def replay(self, client_state: dict[str, Any]) -> None:
        """Replay the batches a stopped run had sampled ahead (``client_state["inflight"]`` of the checkpoint this
        run continues from, :meth:`inflight_batches`) instead of sampling them again; none without them."""
        self._replay = {int(b["step"]): b for b in client_state.get("inflight", [])}

    def name(self, death: WorkerDied) -> WorkerDied:
        """``death`` under the name of the actor its Ray exception names (e.g. "learner worker 0" for a death seen
        while pushing a collective sync to the rollout actors), when it is one of this run's."""
        aid = actor_id_of(death.cause)
        if not aid:
            return death
        for kind, handles in (("learner worker", getattr(self.learner, "workers", [])),
                              ("rollout actor", getattr(self.rollout, "actors", [])),
                              ("reward actor", getattr(self.rewards, "actors", []))):
            for i, h in enumerate(handles):
                if getattr(h, "_actor_id", None) is not None and h._actor_id.hex() == aid:
                    return death.named(f"{kind} {i}")
        return death

    def recover(self, death: WorkerDied, checkpoint: str | None) -> int:
        """After ``death`` (a process of any pool died, in any phase): a new learner restored from ``checkpoint`` (or
        the initial adapter), a new reward pool if a reward actor died (Ray restarts a rollout actor itself), the
        prompt stream rewound to the checkpoint's data position and the rollout actors re-synced. Returns the step
        the new learner is at; the steps after it are redone exactly as the undisturbed run did them."""
        from actors.learner import Learner

        self.learner_restarts += 1
        self.recoveries.append({"what": death.what, "phase": death.phase, "error": type(death.cause).__name__,
                                "checkpoint": checkpoint})
        print(f"[train] {death}; rebuilding from {checkpoint or 'the initial adapter'} "
              f"({self.learner_restarts}/{self.cfg.learner.max_restarts})", file=sys.stderr)
        _quietly(self.close, "pipeline")
        self.learner.shutdown()
        if death.what.startswith("reward actor"):
            self._new_reward_pool()
        learner = Learner(self.cfg, stage="grpo", resume_from=checkpoint,
                          init_adapter=self.init_adapter,
                          total_steps=self.optimizer_steps(self.cfg))
        self.stream.close()
        stream = PromptStream(self.cfg.data.pref_dir, self.model_path, self.cfg.data, seed=self.cfg.seed,
                              position=int((learner.client_state or {}).get("data_position", 0)))
        self.restore(learner, stream, learner.step)
        with dies_as("learner worker", "weight sync after a recovery"):
            self.sync()
        return learner.step

    def _new_reward_pool(self) -> None:
        from rewards.actor import RewardPool

        replaced = self.rewards.replaced + 1
        _quietly(self.rewards.shutdown, "reward pool shutdown")
        self.rewards = RewardPool(self.cfg.reward, answer_tag=self.cfg.data.answer_tag)
        self.rewards.replaced = replaced

    def save_checkpoint(self, path: str, step: int, stopping: bool = False) -> None:
        """The learner's checkpoint at ``step`` with what an exact resume needs: data position and policy version;
        ``stopping`` (the run stops after it): also the batches sampled ahead from older policies
        (:meth:`inflight_batches`)."""
        state: dict[str, Any] = {"data_position": self.data_position, "version": self.version, "step": step}
        if stopping:
            state["inflight"] = self.inflight_batches(step)
        with dies_as("learner worker", "checkpoint"):
            self.learner.save_checkpoint(path, state)

    def inflight_batches(self, step: int) -> list[dict[str, Any]]:
        """After step ``step`` (trained and synced): the batches of later steps that the version gate let sample a
        policy older than the learner's (at lag k ≥ 1 after a step that is not a checkpoint step, up to k of them),
        each waited for and as plain data (:func:`~polyaudio_rl.inflight.batch_record`). A batch
        whose making failed ends the list (the resumed run samples it, and those after it, again)."""
        out: list[dict[str, Any]] = []
        if self._first is None:
            return out
        for b in range(step + 1, min(step + self.lag, self.cfg.grpo.steps) + 1):
            fut = self._batches.get(b)
            if fut is None or min_sample_version(b, *self._first, self.lag, self.checkpoint_steps()) >= self.version:
                break  # not submitted, or sampled from the checkpoint's policy: sampled again exactly on resume
            try:
                batch = fut.result()
            except Exception as exc:  # noqa: BLE001 - the stop goes on; this batch is sampled again on resume
                print(f"[train] the batch of step {b} in flight could not be kept ({type(exc).__name__}: {exc}); "
                      "the resumed run samples it from the checkpoint's policy", file=sys.stderr)
                break
            if batch is None:
                break
            out.append(batch_record(b, batch.groups, self.version))
        return out

    def summary(self) -> dict[str, Any]:
        """The run's accounting for summary.json: what was trained, retried and replaced."""
        return {"bad_rows": self.stream.bad, "trained_ids": self.trained_ids, "policy_version": self.version,
                "rollout_resends": self.rollout.resends, "learner_restarts": self.learner_restarts,
                "recoveries": self.recoveries, "reward_actor_replacements": self.rewards.replaced}

    def shutdown(self, timeline_path: Any = None) -> None:
        """Stop the pipeline, write the timeline (a Chrome trace, when a path is given) and shut every pool down;
        errors are reported, never raised: the run's own error may be on its way up."""
        _quietly(self.close, "pipeline")
        for pool in (self._producer, self._syncer):
            pool.shutdown(wait=False, cancel_futures=True)
        if timeline_path is not None:
            self.timeline.write(timeline_path)
        self.stream.close()
        for part in (self.rollout, self.rewards, self.learner):
            _quietly(part.shutdown, "shutdown")

    # ------------------------------------------------------------------------------------------------ sync
    def _learner_half(self, version: int) -> Callable[[], tuple[Any, list[float]]]:
        """Send the learner's half of the sync (one call; it runs before any learner call sent after it) and
        return the function that waits for it: the new weights as ``rollout.sync_transport`` hands them over —
        ``object_store``: an ObjectRef (learner → object store → actors); ``collective``: names and shapes (rank 0
        keeps the tensors for its broadcast); ``driver``: the tensors, materialised here (one
        extra copy through this process, kept to compare transports) — and the probe's log-probs under them."""
        item = TrainItem(self.probe.prompt, list(self.probe.completion_ids))
        rc = self.cfg.rollout
        with dies_as("learner worker", "weight sync"):
            wait = self.learner.submit_sync_half(rc.sync_transport, rc.sync_mode, version, item)

        def result() -> tuple[Any, list[float]]:
            with dies_as("learner worker", "weight sync"):
                return wait()

        return result

    def _push(self, weights: Any, expected: list[float], version: int) -> dict[str, float]:
        t = time.time()
        with self.timeline.span("sync", "push+verify", version=version), dies_as("rollout actor", "weight sync"):
            if self.cfg.rollout.sync_transport == "collective":  # learner rank 0 broadcasts `version` to the actors
                results = self.rollout.sync_collective(self.learner.sender, weights, version, expected)
            else:
                results = self.rollout.sync(weights, version, expected)
        diffs = [getattr(r, "max_abs_diff", 0.0) or 0.0 for r in results]
        return {"time/sync_push": time.time() - t, "sync/max_abs_diff": float(max(diffs) if diffs else 0.0)}

    def wait_sync(self) -> dict[str, float]:
        """Wait for the sync running in the background (if any); its figures, or raise what it raised."""
        fut, self._sync_future = self._sync_future, None
        return fut.result() if fut is not None else {}

    def sync(self, background: bool = False) -> dict[str, float]:
        """New weights to every rollout actor as policy version v+1, verified by the probe. With ``background``
        the step only sends the learner's half (the learner runs it before the next step, which may be sent at
        once); waiting for it, the push and the verification run as a future that :meth:`wait_sync` (or the next
        sync) waits for. ``time/sync`` is what the step waited for."""
        t = time.time()
        prev = self.wait_sync()  # the background sync before this one (its figures are logged with this step)
        version = self.version + 1
        half = self._learner_half(version)
        self.policy.bump()

        def learner_half() -> tuple[Any, list[float], float]:
            t0 = time.time()
            with self.timeline.span("learner", "sync: weights + probe", version=version):
                weights, expected = half()
            return weights, expected, time.time() - t0

        if not background:
            weights, expected, _ = learner_half()
            out = {"time/sync_learner": time.time() - t, "policy_version": float(version),
                   **self._push(weights, expected, version)}
            out["time/sync"] = time.time() - t
            return out

        def finish() -> dict[str, float]:
            weights, expected, waited = learner_half()
            return {"time/sync_learner": waited, **self._push(weights, expected, version)}

        self._sync_future = self._syncer.submit(finish)
        return {**prev, "time/sync": time.time() - t, "policy_version": float(version)}

    # ------------------------------------------------------------------------------------------------ prefetch
    def _prefetch(self, upto: int) -> None:
        """Hand the learner the prompts of batches up to step ``upto`` to encode before their step (the learner's
        prompt cache): at lag 0 right after their rollouts are submitted (the learner waits for them anyway), at
        lag >= 1 after the sync of the step before, never ahead of a step the learner still has to train (the
        producer's first batch too goes right away: nothing is queued on the learner yet)."""
        with self._prep_lock:
            ready = [p for p in self._prep if p[0] <= upto]
            self._prep = [p for p in self._prep if p[0] > upto]
        with dies_as("learner worker", "prefetch"):
            for _, prompts in ready:
                self.learner.prefetch(prompts, self.cfg.grpo.group_size)

    # ------------------------------------------------------------------------------------------------ producer
    def _submit_batches(self, step: int) -> None:
        """Keep the batches the trainer may need next in flight: steps up to ``step + max_policy_lag + 1`` (the
        last one waits at the version gate for the sync that lets it start), never past ``grpo.steps``."""
        if self._first is None:
            self._first = (step, self.version)
            self._next = step
        upto = max(step, min(step + self.lag + 1, self.cfg.grpo.steps))
        while self._next <= upto:
            self._batches[self._next] = self._producer.submit(self._produce, self._next, self._first)
            self._next += 1

    def _produce(self, step: int, first: tuple[int, int]) -> RolloutBatch | None:
        """The batch of ``step`` once the rollout actors serve the oldest policy it may be sampled from (the
        version gate); None when the pipeline was stopped first. An error stops the batches queued after it."""
        if self._stop.is_set():
            return None
        try:
            need = min_sample_version(step, *first, self.lag, self.checkpoint_steps())
            if not self.policy.wait_served(need, stop=self._stop.is_set):
                return None
            return self._make_batch(step, first)
        except BaseException:
            self._stop.set()
            raise

    def _make_batch(self, step: int, first: tuple[int, int]) -> RolloutBatch:
        from rewards.scorer import Group

        g = self.cfg.grpo
        t0 = time.time()
        with dies_as("data stream worker", "data"):
            items: list[PromptItem] = self.stream.take(g.prompts_per_step)
        t1 = time.time()
        self.timeline.add("data", "take (wait)", t0, t1, step=step)
        gids = [f"{step}:{it.position}:{it.sample.id}" for it in items]
        replay = self._replay.pop(step, None)
        if replay is not None:
            groups = replayed_groups(replay, gids, first[1])
            self._queue_prefetch(step, items, first[0])
        else:
            groups = self._sample(step, items, gids, first[0])
        t2 = time.time()
        texts = [[c.text for c in grp.completions] for grp in groups]
        with self.timeline.span("reward", "score", step=step), dies_as("reward actor", "reward scoring"):
            scores = self.rewards.score_batch([Group(it.sample, tx) for it, tx in zip(items, texts)])
        scores.check(self.cfg.reward.max_unscored_fraction)
        t3 = time.time()
        return RolloutBatch(step, items, groups, scores, {"time/data": t1 - t0, "time/generate": t2 - t1,
                                                          "time/reward": t3 - t2},
                            end_position=items[-1].position + 1 if items else self.stream.position)

    def _sample(self, step: int, items: list[PromptItem], gids: list[str], first_step: int) -> list[Any]:
        """G completions per prompt from the rollout pool (its current policy), the learner's prefetch sent."""
        g = self.cfg.grpo
        with dies_as("rollout actor", "rollout"):
            job = self.rollout.submit([it.prompt for it in items], gids, g.group_size)
        # open spans: a step that ends while these still run counts them as busy (busy/rollout)
        spans = [self.timeline.begin(f"rollout/actor-{sh.actor}", "generate", sh.sent_at, step=step,
                                     version=job.version, groups=sh.end - sh.start) for sh in job.shards]
        self._queue_prefetch(step, items, first_step)
        try:
            with dies_as("rollout actor", "rollout"):
                return self.rollout.collect(job)
        finally:
            t2 = time.time()
            for tok, sh in zip(spans, job.shards):  # where and when each shard last ran (resent: another actor)
                self.timeline.end(tok, sh.done_at or t2, lane=f"rollout/actor-{sh.actor}", start=sh.sent_at)

    def _queue_prefetch(self, step: int, items: list[PromptItem], first_step: int) -> None:
        """Queue the batch's prompts for the learner's prompt cache (:meth:`_prefetch`); send them at once at lag 0 and
        for the pipeline's first batch (no step or sync of the learner's to delay)."""
        with self._prep_lock:
            self._prep.append((step, [it.prompt for it in items]))
        if self.lag == 0 or step == first_step:
            self._prefetch(step)

    def _next_batch(self, step: int) -> RolloutBatch:
        self._submit_batches(step)
        batch = self._batches.pop(step).result()  # raises what making it raised
        if batch is None:
            raise RuntimeError(f"the batch of step {step} was not made: the pipeline was stopped")
        return batch

    def close(self) -> None:
        """Stop making batches and finish a background sync (call before evaluating or shutting down); batches
        made ahead are dropped (their rows are read again by whoever continues from :attr:`data_position`)."""
        self._stop.set()
        self.policy.wake()  # a batch waiting at the version gate gives up
        for fut in self._batches.values():
            fut.cancel()
        try:
            wait(list(self._batches.values()), timeout=600)
            self.wait_sync()
        finally:
            self._batches.clear()
            self._first = None
            self._stop = threading.Event()

    # ------------------------------------------------------------------------------------------------ step
    def step(self, step: int) -> StepResult:
        """One GRPO step: wait for the step's scored batch, train on its groups, sync the new policy."""
        m: dict[str, Any] = {"phase": "grpo"}
        t0 = time.time()
        start = self._last_end if self._last_end is not None else t0
        batch = self._next_batch(step)
        t1 = time.time()
        self.timeline.add("trainer", "wait for rollouts", t0, t1, step=step)
        m.update(batch.times)
        m["time/wait_rollout"] = t1 - t0
        m.update(reward_metrics(batch.scores))  # the step's scored groups: batch.items / .groups / .scores
        items, rewards, lengths, trained, fm = self._train_inputs(batch)
        m.update(fm)
        m.update(self._train(step, batch, items, rewards, trained))
        t2 = time.time()
        self.data_position = batch.end_position
        background = self.lag > 0 and step not in self.checkpoint_steps()
        m.update(self.sync(background=background))
        if self.lag > 0:
            self._prefetch(step + 1)
        t3 = time.time()
        self._last_end = t3
        n_samples = sum(len(grp.completions) for grp in batch.groups)
        m.update({
            "time/train": t2 - t1, "time/step": t3 - start, "samples_per_s": n_samples / max(t3 - start, 1e-9),
            "response_length": float(np.mean(lengths)) if lengths else 0.0,
            "data/position": float(self.data_position), "data/bad_rows": float(len(self.stream.bad)),
            "busy/rollout": self.timeline.busy_fraction("rollout/", start, t3),
            "busy/reward": self.timeline.busy_fraction("reward", start, t3),
            "busy/learner": self.timeline.busy_fraction("learner", start, t3),
        })
        return StepResult(step, m, [it.sample.id for it in batch.items])

    def _train_inputs(self, batch: RolloutBatch) -> tuple[list[TrainItem], list[float], list[int], list[str],
                                                          dict[str, float]]:
        """The batch's completions that may be trained on — groups within ``max_policy_lag`` versions, fully
        scored — as (items, rewards, completion lengths, sample ids trained, drop/lag metrics)."""
        items, rewards, lengths, lags, trained = [], [], [], [], []
        dropped_unscored = dropped_stale = 0
        for it, grp, gs in zip(batch.items, batch.groups, batch.scores.groups):
            lag = self.version - grp.policy_version
            if lag < 0 or lag > self.lag:
                dropped_stale += 1  # never trained on: sampled more than max_policy_lag versions ago
                continue
            if any(t is None for t in gs.total):
                dropped_unscored += 1  # a partly unscored group has no trustworthy baseline
                continue
            lags.append(lag)
            trained.append(it.sample.id)
            for c, r in zip(grp.completions, gs.total):
                items.append(TrainItem(it.prompt, list(c.token_ids), old_logprobs=list(c.logprobs),
                                       group_id=grp.group_id))
                rewards.append(float(r))
                lengths.append(len(c.token_ids))
        m = {"groups/dropped_unscored": float(dropped_unscored), "groups/dropped_stale": float(dropped_stale),
             "policy_lag/mean": float(np.mean(lags)) if lags else 0.0,
             "policy_lag/max": float(max(lags)) if lags else 0.0}
        return items, rewards, lengths, trained, m

    def _train(self, step: int, batch: RolloutBatch, items: list[TrainItem], rewards: list[float],
               trained: list[str]) -> dict[str, Any]:
        """Advantages (dynamic sampling first), ``on_scored`` (the run's samples), then the learner's updates;
        returns their metrics."""
        m: dict[str, Any] = {}
        if items:
            items, am = group_advantages(items, rewards, self.cfg.grpo)
            m.update(am)
        if self.on_scored is not None:  # the scored groups with the advantages trained on (the run's samples)
            self.on_scored(step, batch, items)
        if items:
            with self.timeline.span("learner", "train", step=step), dies_as("learner worker", "train step"):
                lm = self.learner.train_grpo_step(items)
            m.update({learner_metric_name(k): v for k, v in lm.items()})
            self.trained_by_step[step] = trained
        return m


def evaluate(rollout_pool: Any, prompts: Sequence[Any], answer_tag: bool = False, controls: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """Greedy answers of the current policy on held-out prompts, rule-verified: accuracy overall and per task, and
    the held-out metrics of :mod:`eval.heldout_metrics`; with ``controls`` also the silence/shuffle controls."""
    from eval.heldout import evaluate as heldout_evaluate

    return heldout_evaluate(rollout_pool, prompts, answer_tag, controls=controls, seed=seed)
