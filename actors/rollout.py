"""Rollout actors: a pool of Ray actors, each wrapping one rollout engine, producing GRPO groups.

Driver-side API (:class:`RolloutPool`)::

    pool = RolloutPool(cfg)                               # cfg.rollout.num_actors actors in one placement group
    groups = pool.generate(prompts)                       # list[RolloutGroup], one per prompt, in order, G each
    results = pool.sync(weights, version, expected)       # per actor: SyncResult(version, fingerprint, ...)
    pool.verify(expected)                                 # raises SyncError if any actor is not on that policy
    pool.shutdown()

* Placement: one bundle per actor (``cpus_per_actor`` CPUs, ``gpus_per_actor`` GPUs; a bundle of
  ``tensor_parallel_size`` GPUs lets vLLM run its TP workers inside the actor's process group) in a placement group
  with ``rollout.placement_strategy``. The engine runs in the actor's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
  when the actor dies, its engine dies with it.
* Batches are split contiguously over the actors; a prompt's G completions always come from one engine call, so a
  group is never split. Groups come back in the order of the prompts.
* Faults: actors have ``max_restarts``. When an actor dies with a batch in flight, the pool waits for Ray to restart
  it, pushes it the weights of the version that batch was submitted at (the pool keeps the weights of the last
  ``grpo.max_policy_lag`` + 1 versions in the object store, each verified against its own fingerprint), and
  re-sends that shard — once per death, never to two actors, so nothing is lost or duplicated. A pipelined driver
  may have synced a newer policy meanwhile; the shard is still sampled by the policy that sampled the rest of its
  batch (same version tag, same behaviour log-probs, as if the actor had not died), and the actor is brought to the
  pool's current version right after. Every rollout call carries its policy version; an actor on another version
  (restarted, or after a failed sync) refuses it, so no group is produced by another policy than its tag says.
* A sync that an actor's death swallowed is pushed again once Ray has restarted the actor (object-store and driver
  transports). A sync to an actor that stays down, or whose fingerprint does not match, raises :class:`SyncError`
  naming it.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from polyaudio_rl.core.config import Config
from polyaudio_rl.core.policy_version import PolicyVersion
from polyaudio_rl.core.procguard import guard_process_tree
from polyaudio_rl.core.prompts import MultiAudioPrompt
from actors.rollout_engine import (
    EngineSpec,
    RolloutGroup,
    RolloutInputError,
    SyncError,
    check_prompts,
    make_engine,
)
from actors.weight_sync import Fingerprint, SyncResult, WeightSyncer, make_probe, sync_tolerance


class RolloutError(RuntimeError):
    """A rollout batch could not be completed (an actor stayed down); names the actor and the samples."""


class StaleVersionError(RuntimeError):
    """An actor was asked for rollouts of a policy version it does not serve."""


class RolloutActor:
    """One engine (vLLM or HF) and its weight syncer, in one Ray actor process."""

    def __init__(self, cfg: Config, model_path: str, index: int):
        self.index = index
        self.cfg = cfg
        self.started = time.time()
        guard_process_tree()  # engine processes (EngineCore, workers) end with this actor, however it dies
        if cfg.rollout.cpu_affinity:  # disjoint cores for rollouts and training (benchmarks/pipeline.py)
            os.sched_setaffinity(0, set(cfg.rollout.cpu_affinity))
        self.engine = make_engine(model_path, cfg.rollout, EngineSpec.from_config(cfg))
        probe = make_probe(self.engine.processor, cfg.rollout.probe_tokens)
        self.syncer = WeightSyncer(self.engine, probe, cfg.rollout.sync_mode, sync_tolerance(cfg), actor=index)
        self.stats = {"batches": 0, "groups": 0, "tokens": 0, "syncs": 0}
        self.start_s = time.time() - self.started

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid(), "version": self.engine.version, "engine": self.engine.name,
                "start_s": self.start_s, "node_id": ray.get_runtime_context().get_node_id(), **self.stats}

    def generate(self, prompts: list[MultiAudioPrompt], group_ids: list[str], n: int, version: int,
                 greedy: bool = False, ignore_eos: bool = False) -> list[RolloutGroup]:
        if self.engine.version != version:
            raise StaleVersionError(f"rollout actor {self.index} serves policy version {self.engine.version}, "
                                    f"the batch asks for version {version}")
        groups = self.engine.generate(prompts, n, group_ids, greedy=greedy, ignore_eos=ignore_eos)
        for g in groups:
            g.actor = self.index
        self.stats["batches"] += 1
        self.stats["groups"] += len(groups)
        self.stats["tokens"] += sum(g.num_tokens for g in groups)
        return groups

    def sync(self, weights: dict, version: int, expected: list[float] | None = None, rewind: bool = False
             ) -> SyncResult:
        res = self.syncer.sync(weights, version, expected, rewind=rewind)
        self.stats["syncs"] += 1
        return res

    def join_weights_group(self, host: str, port: int, rank: int, world: int, backend: str, timeout_s: float) -> None:
        from .collective import WeightGroup

        old = getattr(self, "_weight_group", None)
        if old is not None:
            old.close()
        self._weight_group = WeightGroup(host, port, rank, world, backend, timeout_s)

    def receive_and_sync(self, meta: list, version: int, expected: list[float] | None = None) -> SyncResult:
        """Collective transport: receive policy ``version`` from learner rank 0's broadcast, then load and verify it
        as :meth:`sync` does."""
        from .collective import empty_buffers, unpack

        buffers = empty_buffers(meta, self._weight_group.device)
        self._weight_group.broadcast(buffers)
        return self.sync(unpack(meta, buffers), version, expected)

    def verify(self, expected: list[float], version: int | None = None) -> Fingerprint:
        return self.syncer.verify(expected, version)

    def fingerprint(self) -> Fingerprint:
        return self.syncer.fingerprint()

    def shutdown(self) -> None:
        self.engine.close()


@dataclass
class _Shard:
    actor: int
    start: int
    end: int
    ref: Any = None
    sends: int = 0
    sent_at: float = 0.0  # time.time() of the last send and of its result (a span on the actor's timeline lane)
    done_at: float = 0.0
    version: int = -1  # the policy version it is sampled from: the job's (also when re-sent after its actor
    # restarted), or the pool's newer one where the job's weights are no longer kept (collective transport)


@dataclass
class RolloutJob:
    """A submitted batch: collect it with :meth:`RolloutPool.collect`."""

    prompts: list[MultiAudioPrompt]
    group_ids: list[str]
    n: int
    version: int
    shards: list[_Shard]
    greedy: bool = False
    ignore_eos: bool = False


class RolloutPool:
    """``rollout.num_actors`` rollout actors in one placement group (see the module docstring)."""

    def __init__(self, cfg: Config, num_actors: int | None = None, model_path: str | None = None):
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from polyaudio_rl.core.model import load_processor, resolve_path
        from polyaudio_rl.core.models import family_of
        from polyaudio_rl.core.prompts import audio_placeholder

        if not ray.is_initialized():
            raise RuntimeError("RolloutPool needs a running Ray (ray.init() or a cluster address) first")
        rc = cfg.rollout
        rc.validate()
        self.cfg, self.rc = cfg, rc
        self.model_path = model_path or resolve_path(cfg.model)  # written once here, never raced by the actors
        processor = load_processor(self.model_path)  # for the input checks, in the driver
        self.tokenizer, self.placeholder = processor.tokenizer, audio_placeholder(processor)
        self.family = family_of(self.model_path)
        self.num_actors = num_actors or rc.num_actors
        gpus = max(rc.gpus_per_actor, float(rc.tensor_parallel_size)) if rc.gpus_per_actor > 0 else 0.0
        bundle = {"CPU": rc.cpus_per_actor, **({"GPU": gpus} if gpus else {})}
        self.pg = placement_group([bundle] * self.num_actors, strategy=rc.placement_strategy)
        ray.get(self.pg.ready(), timeout=rc.actor_start_timeout_s)
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if rc.engine_in_process else "1", "TOKENIZERS_PARALLELISM": "false"}
        if not gpus:
            env["OMP_NUM_THREADS"] = str(max(1, int(rc.cpus_per_actor)))
        remote_cls = ray.remote(RolloutActor)
        self.actors = [
            remote_cls.options(
                num_cpus=rc.cpus_per_actor, num_gpus=gpus, max_restarts=rc.max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                runtime_env={"env_vars": env},
            ).remote(cfg, self.model_path, i)
            for i in range(self.num_actors)
        ]
        self.infos = ray.get([a.ready.remote() for a in self.actors], timeout=rc.actor_start_timeout_s)
        self.policy = PolicyVersion()  # `version` below; the pipelined driver shares this counter and waits on it
        # version -> (weights ref, probe log-probs): the versions a batch in flight may carry, for actors that restart
        self._kept: dict[int, tuple[Any, list[float] | None]] = {}
        self.keep_versions = cfg.grpo.max_policy_lag + 1
        self._down: BaseException | None = None  # the first death seen by the sync in progress (its error's cause)
        self.resends = 0  # shards re-sent after their actor died or refused a stale version
        self.resend_causes: dict[str, int] = {}
        self.recoveries = 0  # restarted actors brought back to a version (their shard's, then the current one)
        self.rewinds = 0  # of which to a version older than the pool's (a re-sent shard of a pipelined batch)
        self._sender: Any = None  # collective transport: learner rank 0's handle (rank 0 of the weight group)
        self._group_members: tuple | None = None  # (sender id, actor pids) the weight group was built for
        self.group_builds = 0
        # Submits and syncs may come from different driver threads (the pipelined GRPO driver): sending a shard and
        # sending a sync are ordered under this lock, so each actor sees them in the pool's version order.
        self._lock = threading.RLock()

    @property
    def version(self) -> int:
        """The policy version the actors serve (a rollout call carries it; an actor on another one refuses)."""
        return self.policy.served

    @version.setter
    def version(self, version: int) -> None:
        self.policy.serve(version)

    # ------------------------------------------------------------------------------------------------ rollouts
    def submit(self, prompts: Sequence[MultiAudioPrompt], group_ids: Sequence[str] | None = None,
               n: int | None = None, *, greedy: bool = False, ignore_eos: bool = False) -> RolloutJob:
        """Check the batch (before any engine sees it) and send its shards; returns at once."""
        prompts = list(prompts)
        gids = list(group_ids) if group_ids is not None else [getattr(p, "sample_id", f"#{i}")
                                                             for i, p in enumerate(prompts)]
        n = n or self.cfg.grpo.group_size
        check_prompts(prompts, gids, max_clips=self.cfg.data.max_clips,
                      max_clip_seconds=self.cfg.data.max_clip_seconds, max_model_len=self.rc.max_model_len,
                      max_new_tokens=self.rc.max_new_tokens, tokenizer=self.tokenizer,
                      family=self.family, placeholder=self.placeholder)
        light = [dataclasses.replace(p, sample=None) for p in prompts]  # the Sample's audio bytes stay here
        k = min(self.num_actors, len(light))
        bounds = [round(i * len(light) / k) for i in range(k + 1)]
        with self._lock:
            job = RolloutJob(light, gids, n, self.version, [_Shard(i, bounds[i], bounds[i + 1]) for i in range(k)],
                             greedy, ignore_eos)
            for shard in job.shards:
                self._send(job, shard)
        return job

    def _send(self, job: RolloutJob, shard: _Shard) -> None:
        shard.sends += 1
        shard.sent_at = time.time()
        if shard.version < 0:
            shard.version = job.version
        shard.ref = self.actors[shard.actor].generate.remote(
            job.prompts[shard.start:shard.end], job.group_ids[shard.start:shard.end], job.n, shard.version,
            job.greedy, job.ignore_eos)

    def collect(self, job: RolloutJob) -> list[RolloutGroup]:
        """Wait for every shard; re-send a shard whose actor died (after Ray restarted and we re-synced it)."""
        results: list[list[RolloutGroup] | None] = [None] * len(job.shards)
        pending = {s.ref: i for i, s in enumerate(job.shards)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            shard = job.shards[i]
            try:
                results[i] = ray.get(ready[0])
                shard.done_at = time.time()
                if shard.sends > 1 and shard.version < self.version:  # re-sent at an older version: move it on
                    with self._lock:
                        self._recover(shard.actor, self.version)
                continue
            except (RayActorError, StaleVersionError) as exc:
                cause = exc
            if shard.sends > self.rc.max_resends:
                ids = job.group_ids[shard.start:shard.end]
                raise RolloutError(f"rollout actor {shard.actor} failed {shard.sends} times on groups {ids}: "
                                   f"{cause}") from cause
            # Re-sent at its own version: a pipelined driver may have synced a newer policy since it was sent
            with self._lock:
                shard.version = self._recover(shard.actor, shard.version)
            self.resends += 1
            why = "StaleVersionError" if isinstance(cause, StaleVersionError) else type(cause).__name__
            self.resend_causes[why] = self.resend_causes.get(why, 0) + 1
            self._send(job, shard)
            pending[shard.ref] = i
        groups = [g for part in results for g in (part or [])]
        self._check_complete(job, groups)
        return groups

    def generate(self, prompts: Sequence[MultiAudioPrompt], group_ids: Sequence[str] | None = None,
                 n: int | None = None, *, greedy: bool = False, ignore_eos: bool = False) -> list[RolloutGroup]:
        """G (= ``n`` or ``grpo.group_size``) completions per prompt from the current policy, in order."""
        return self.collect(self.submit(prompts, group_ids, n, greedy=greedy, ignore_eos=ignore_eos))

    @staticmethod
    def _check_complete(job: RolloutJob, groups: list[RolloutGroup]) -> None:
        got = [g.group_id for g in groups]
        if got != job.group_ids:
            lost = sorted(set(job.group_ids) - set(got))
            raise RolloutError(f"rollout returned groups {got[:8]}… for {job.group_ids[:8]}… (lost {lost[:8]})")
        for g in groups:
            if len(g.completions) != job.n or g.policy_version < job.version:
                raise RolloutError(f"group {g.group_id}: {len(g.completions)} completions of policy version "
                                   f"{g.policy_version}, expected {job.n} of version {job.version} or newer")

    def _wait_ready(self, i: int) -> dict[str, Any]:
        """Actor ``i``'s info once it answers again (Ray restarts a dead one; its engine takes a while to start)."""
        deadline = time.monotonic() + self.rc.actor_start_timeout_s
        failures = 0
        while True:
            try:
                info = ray.get(self.actors[i].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                self.infos[i] = info
                return info
            except (RayActorError, GetTimeoutError) as exc:
                # ActorUnavailableError: Ray is restarting it (engine start takes a while) — keep waiting. Other
                # errors right after a death are normal until Ray registers it; many of them mean it stays dead.
                if not isinstance(exc, ActorUnavailableError):
                    failures += 1
                if failures >= 10 or time.monotonic() > deadline:
                    raise RolloutError(f"rollout actor {i} is down and did not come back "
                                       f"(rollout.max_restarts={self.rc.max_restarts}): {exc}") from exc
                time.sleep(0.5)

    def _weights_of(self, version: int) -> tuple[Any, list[float] | None] | None:
        """(weights ref, probe log-probs) of a kept ``version``, or None when its weights are not at hand."""
        ref, expected = self._kept.get(version, (None, None))
        if ref is None and self._sender is not None and version == self.version:
            # collective transport: the actor missed the broadcast; learner rank 0 still holds this version
            ref = ray.get(self._sender.prepared_weights_ref.remote(version))[0]
            self._kept[version] = (ref, expected)
        return (ref, expected) if ref is not None else None

    def _recover(self, i: int, version: int) -> int:
        """Wait until actor ``i`` answers again, then bring it to ``version`` — a shard's own version, older than the
        pool's when a pipelined driver synced meanwhile (the actor is rewound to it), or the pool's current one where
        that version's weights are no longer kept. Returns the version it serves."""
        info = self._wait_ready(i)
        if info["version"] == version:
            return version
        weights = self._weights_of(version)
        if weights is None and version != self.version:  # not kept (collective transport): the newest policy
            version, weights = self.version, self._weights_of(self.version)
            if info["version"] == version:
                return version
        if weights is None:
            raise RolloutError(f"rollout actor {i} restarted at version {info['version']} and the pool has no "
                               f"weights for version {version}")
        ref, expected = weights
        try:
            ray.get(self.actors[i].sync.remote(ref, version, expected, rewind=version <= info["version"]),
                    timeout=self.rc.actor_start_timeout_s)
        except RayActorError as exc:
            raise SyncError(f"rollout actor {i} died again while being re-synced to version {version}") from exc
        self.recoveries += 1
        self.rewinds += version < self.version
        return version

    def _keep(self, version: int, ref: Any, expected: list[float] | None) -> None:
        """Keep ``version``'s weights for actors that restart; drop those older than ``keep_versions`` versions."""
        self._kept[version] = (ref, expected)
        for v in [v for v in self._kept if v <= version - self.keep_versions]:
            del self._kept[v]

    # ------------------------------------------------------------------------------------------------ weights
    def sync(self, weights: dict[str, Any] | Any, version: int, expected: Sequence[float] | None = None
             ) -> list[SyncResult]:
        """Push ``weights`` (``{hub name: tensor}``: merged weights or LoRA tensors per ``rollout.sync_mode``, or an
        ObjectRef to them) as policy ``version`` to every actor; each verifies against ``expected`` (the learner's
        probe log-probs, see :mod:`actors.weight_sync`). Returns one :class:`SyncResult` per actor."""
        if version <= self.version:
            raise ValueError(f"sync version {version} must be newer than the pool's {self.version}")
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        expected = list(expected) if expected is not None else None
        with self._lock:
            # From here the pool's policy is `version`: an actor that misses it refuses rollouts until re-synced.
            self.version = version
            self._keep(version, ref, expected)
            refs = [a.sync.remote(ref, version, expected) for a in self.actors]
        self._down = None
        results, errors, down = self._sync_results(refs)
        for i, why in down.items():  # its process died: once Ray has restarted it, this version is pushed again
            try:
                with self._lock:
                    results.append(self._resync(i, version))
            except (RolloutError, SyncError, RayActorError, GetTimeoutError):
                errors.append(why)  # it stays down
        if errors:
            raise SyncError(f"sync of policy version {version} failed on {len(errors)} of {len(self.actors)} "
                            "rollout actors:\n  " + "\n  ".join(errors)) from self._down
        return sorted(results, key=lambda r: r.actor)

    def _resync(self, i: int, version: int) -> SyncResult:
        """Push ``version`` (its kept weights) to actor ``i`` again once Ray has restarted it: a sync lost with the
        actor's process is not an error while the actor comes back (``rollout.max_restarts``)."""
        self._wait_ready(i)
        ref, expected = self._weights_of(version) or (None, None)
        if ref is None:
            raise RolloutError(f"rollout actor {i}: no weights kept for version {version}")
        # rewind: another path (a re-sent shard) may have brought the restarted actor to this version already
        res = ray.get(self.actors[i].sync.remote(ref, version, expected, rewind=True),
                      timeout=self.rc.actor_start_timeout_s)
        self.recoveries += 1
        return res

    def _sync_results(self, refs: list[Any]) -> tuple[list[SyncResult], list[str], dict[int, str]]:
        """Each actor's SyncResult, or a line saying why it has none (failed verification, no answer), or — for an
        actor whose process died (Ray may be restarting it) — the line in ``down``."""
        results, errors, down = [], [], {}
        for i, r in enumerate(refs):
            try:
                results.append(ray.get(r, timeout=self.rc.actor_start_timeout_s))
            except RayActorError as exc:
                self._down = self._down or exc  # the cause of a SyncError: a process died
                down[i] = f"rollout actor {i} is down ({type(exc).__name__}): {str(exc).splitlines()[0]}"
            except SyncError as exc:
                errors.append(str(exc).splitlines()[-1])
            except GetTimeoutError:
                errors.append(f"rollout actor {i} did not answer within {self.rc.actor_start_timeout_s:g} s")
        return results, errors, down

    def _ensure_group(self, sender: Any) -> None:
        """(Re)build the weight-broadcast group when its members changed (first sync, a restarted actor or learner)."""
        pids = tuple(i["pid"] for i in ray.get([a.ready.remote() for a in self.actors],
                                                timeout=self.rc.actor_start_timeout_s))
        members = (sender._actor_id.hex(), pids)
        if members == self._group_members:
            return
        gpu = self.cfg.learner.use_gpu and self.rc.gpus_per_actor > 0
        backend, world, timeout = ("nccl" if gpu else "gloo"), len(self.actors) + 1, self.rc.actor_start_timeout_s
        host, port = ray.get(sender.address.remote())
        ray.get([sender.join_weights_group.remote(host, port, world, backend, timeout)]
                + [a.join_weights_group.remote(host, port, i + 1, world, backend, timeout)
                   for i, a in enumerate(self.actors)], timeout=timeout)
        self._group_members = members
        self.group_builds += 1

    def sync_collective(self, sender: Any, meta: list, version: int, expected: Sequence[float] | None = None
                        ) -> list[SyncResult]:
        """Collective transport: ``sender`` (learner rank 0, holding policy ``version`` from its
        ``prepare_weights``) broadcasts it to every actor in one ``torch.distributed`` group (gloo on CPU, NCCL on
        GPU); each loads and verifies it against ``expected``. The tensors never pass the driver or the object store."""
        if version <= self.version:
            raise ValueError(f"sync version {version} must be newer than the pool's {self.version}")
        expected = list(expected) if expected is not None else None
        with self._lock:
            self._ensure_group(sender)
            self._sender = sender
            self.version = version
            self._keep(version, None, expected)  # the weights stay on learner rank 0 (fetched when needed)
            send = sender.send_weights.remote(version)
            refs = [a.receive_and_sync.remote(meta, version, expected) for a in self.actors]
        errors, self._down = [], None
        try:
            ray.get(send, timeout=self.rc.actor_start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported with the actors' errors below
            self._down = exc if isinstance(exc, RayActorError) else None
            errors.append(f"learner rank 0 could not broadcast: {str(exc).splitlines()[0]}")
        results, more, down = self._sync_results(refs)
        errors += more + list(down.values())  # the broadcast group is rebuilt with the restarted actor next time
        if errors:
            self._group_members = None  # rebuilt at the next sync
            raise SyncError(f"collective sync of policy version {version} failed:\n  " + "\n  ".join(errors)
                            ) from self._down
        return results

    def verify(self, expected: Sequence[float]) -> list[Fingerprint]:
        """Every actor recomputes its probe fingerprint; raises :class:`SyncError` unless all match ``expected``."""
        refs = [a.verify.remote(list(expected), self.version) for a in self.actors]
        fps, errors, down = [], [], None
        for i, r in enumerate(refs):
            try:
                fps.append(ray.get(r))
            except RayActorError as exc:
                down = down or exc
                errors.append(f"rollout actor {i} is down ({type(exc).__name__})")
            except SyncError as exc:
                errors.append(str(exc).splitlines()[-1])
        if errors:
            raise SyncError(f"policy version {self.version} is not in effect on {len(errors)} of "
                            f"{len(self.actors)} rollout actors:\n  " + "\n  ".join(errors)) from down
        return fps

    def fingerprints(self) -> list[Fingerprint]:
        return ray.get([a.fingerprint.remote() for a in self.actors])

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([a.ready.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Close the engines, kill the actors, free the placement group."""
        from ray.util.placement_group import remove_placement_group

        closing = [a.shutdown.remote() for a in self.actors]
        try:
            ray.get(closing, timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor must not block the cleanup below
            pass
        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)
        self.actors = []


__all__ = ["RolloutActor", "RolloutError", "RolloutInputError", "RolloutJob", "RolloutPool", "StaleVersionError"]
