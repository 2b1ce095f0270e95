"""The one way into Ray: join the configured cluster or start a local one; check the placement fits before any
pool starts. Every entry point (training, SFT, the learner handle, the ablation runner, benchmarks) goes through
:func:`connect_ray`, so a job sees the same runtime environment wherever it was started."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import Config


class ResourceError(RuntimeError):
    """The config asks for more of a resource than the Ray cluster has."""


_REAPER: Any = None


def _start_reaper_once() -> None:
    global _REAPER
    if _REAPER is None:
        from .procguard import start_reaper

        _REAPER = start_reaper() or False


def connect_ray(cfg: Config, console: Any = None) -> dict[str, Any]:
    """Join ``cfg.ray_address`` / ``RAY_ADDRESS`` when set, else start a local Ray (its processes end with this
    driver, however it dies). Returns cluster resources. With a :class:`~polyaudio_rl.console.Console`, Ray's own
    log lines and the workers' output go to its files."""
    import ray

    if console is not None:
        console.quiet_loggers()  # ray configured a console handler on import
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        env = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
                            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                            "PYTHONPATH": os.pathsep.join(p for p in [str(Path.cwd()), os.environ.get("PYTHONPATH", "")] if p)}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            # address="local": a new local Ray, never a `ray start` cluster that happens to run on this machine
            ray.init(address="local", num_cpus=cfg.ray_num_cpus or None, include_dashboard=False, runtime_env=env,
                     log_to_driver=True)
            _start_reaper_once()
    if console is not None:
        console.route_ray_workers()
    return ray.cluster_resources()


def check_resources(cfg: Config, resources: dict[str, Any]) -> None:
    """Fail before anything starts when the placement asks for more GPUs/CPUs than the cluster has."""
    r, lc = cfg.rollout, cfg.learner
    gpus = r.num_actors * r.gpus_per_actor + (lc.num_workers if lc.use_gpu else 0)
    have = float(resources.get("GPU", 0))
    if gpus > have:
        raise ResourceError(
            f"the config needs {gpus:g} GPUs (rollout.num_actors={r.num_actors} × rollout.gpus_per_actor="
            f"{r.gpus_per_actor:g} + learner.num_workers={lc.num_workers if lc.use_gpu else 0}), "
            f"but the Ray cluster has {have:g}")
    if r.placement_strategy == "STRICT_SPREAD":
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if r.num_actors > nodes:
            raise ResourceError(f"rollout.placement_strategy=STRICT_SPREAD needs one node per rollout actor "
                                f"({r.num_actors}), but the Ray cluster has {nodes} alive node(s)")
    cpus = r.num_actors * r.cpus_per_actor + lc.num_workers * lc.cpus_per_worker
    if cpus > float(resources.get("CPU", 0)):
        raise ResourceError(f"the config needs {cpus:g} CPUs for rollout actors and learners, the cluster has "
                            f"{resources.get('CPU', 0):g} (raise ray_num_cpus for a local cluster)")
