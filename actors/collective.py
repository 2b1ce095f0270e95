"""Collective weight transport (``rollout.sync_transport='collective'``): learner → rollout actors in one broadcast.

A ``torch.distributed`` process group of learner rank 0 (rank 0) and every rollout actor (ranks 1..N), built apart from
the learners' own DeepSpeed group (its own ``TCPStore`` on a free port of learner rank 0's node): **gloo on CPU,
NCCL on GPU, the same code**. A sync packs the tensors of one policy version (merged weights or LoRA tensors,
``rollout.sync_mode``) into one flat buffer per dtype; rank 0 broadcasts them and every rollout actor rebuilds
``{name: tensor}`` and loads and verifies them exactly as with the other transports (probe log-probs,
:mod:`actors.weight_sync`). Neither the driver nor the object store holds the tensors.

Membership: the pool builds the group at the first collective sync and rebuilds it when a member changed (a
restarted rollout actor, a restarted learner); every member's join blocks until all have joined, so the pool starts
all joins at once. A restarted rollout actor between syncs is brought to the current version from the weights
learner rank 0 kept for that version, through the object store (rare; see ``RolloutPool._recover``).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lies in its dtype's flat buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    numel: int


def pack(tensors: dict[str, torch.Tensor]) -> tuple[list[TensorMeta], dict[str, torch.Tensor]]:
    """``{name: tensor}`` → (metadata, one contiguous 1-D buffer per dtype). Names keep their order."""
    meta: list[TensorMeta] = []
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise ValueError(f"collective sync: tensor {name!r} has dtype {t.dtype}, not one of {sorted(DTYPES)}")
        off = sizes.get(dtype, 0)
        meta.append(TensorMeta(name, tuple(t.shape), dtype, off, t.numel()))
        parts.setdefault(dtype, []).append(t.detach().reshape(-1))
        sizes[dtype] = off + t.numel()
    return meta, {d: torch.cat(ps) for d, ps in sorted(parts.items())}


def empty_buffers(meta: list[TensorMeta], device: str = "cpu") -> dict[str, torch.Tensor]:
    sizes: dict[str, int] = {}
    for m in meta:
        sizes[m.dtype] = max(sizes.get(m.dtype, 0), m.offset + m.numel)
    return {d: torch.empty(n, dtype=DTYPES[d], device=device) for d, n in sorted(sizes.items())}


def unpack(meta: list[TensorMeta], buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {m.name: buffers[m.dtype][m.offset: m.offset + m.numel].view(m.shape) for m in meta}


def nbytes(meta: list[TensorMeta]) -> int:
    return sum(m.numel * DTYPES[m.dtype].itemsize for m in meta)


class WeightGroup:
    """This process's membership in the weight-broadcast group (rank 0: learner rank 0; 1..N: rollout actors)."""

    def __init__(self, host: str, port: int, rank: int, world: int, backend: str, timeout_s: float = 300.0):
        import torch.distributed as dist

        if backend not in ("gloo", "nccl"):
            raise ValueError(f"collective sync backend must be gloo or nccl, got {backend!r}")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world, self.backend = rank, world, backend
        self.device = "cuda" if backend == "nccl" else "cpu"
        self.store = dist.TCPStore(host, port, world, rank == 0, timeout, wait_for_workers=False)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg: Any = dist.ProcessGroupNCCL(self.store, rank, world, opts)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, world, timeout)
        self.barrier()  # everyone is in: the group is usable

    def barrier(self) -> None:
        t = torch.zeros(1, device=self.device)
        self.pg.allreduce([t]).wait()

    def broadcast(self, buffers: dict[str, torch.Tensor]) -> None:
        """In place: rank 0's buffers overwrite every other rank's (same dtypes and sizes, from the metadata)."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        for _, buf in sorted(buffers.items()):
            self.pg.broadcast([buf], opts).wait()

    def close(self) -> None:
        self.pg = None
        self.store = None


__all__ = ["TensorMeta", "WeightGroup", "empty_buffers", "nbytes", "pack", "unpack"]
