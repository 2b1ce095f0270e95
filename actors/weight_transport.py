"""The learner's half of a weight sync: gather the policy's weights and hand them over by one of three transports.

``rollout.sync_transport`` picks the hand-over; the rollout side (loading and verifying) is :mod:`actors.weight_sync`,
the broadcast group and its wire format are :mod:`actors.collective`.

* ``driver``       — rank 0 returns ``{hub name: tensor}``; the driver passes it to every rollout actor;
* ``object_store`` — rank 0 puts them into the Ray object store and returns ``[ref]``; the actors fetch them there;
* ``collective``   — rank 0 packs them into one flat buffer per dtype and keeps them; the driver gets the metadata
  and starts the broadcast (:meth:`WeightSender.send_weights`) with the rollout actors' receives.

:class:`WeightSender` is a mixin of :class:`actors.learner_worker.LearnerWorker` (its methods are the worker's Ray
methods); it reads the worker's ``cfg``, ``model``, ``dtype``, ``rank`` and ``completion_logprobs``.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from polyaudio_rl.core.batching import TrainItem
from polyaudio_rl.core.models import family_of_model
from polyaudio_rl.core.weights import lora_tensors, merged_lora_weights, peft_to_hub

TRANSPORTS = ("driver", "object_store", "collective")


class WeightSender:
    """Learner-side weight gathering and the three transports (mixed into the learner worker)."""

    _prepared: tuple[int, dict[str, torch.Tensor], list[Any], dict[str, torch.Tensor]] | None = None
    _weight_group: Any = None

    def get_weights(self, mode: str) -> dict[str, torch.Tensor] | None:
        """Collective. Rank 0 returns {hub name: tensor}: the LoRA tensors ('adapter') or, for 'merged', every
        weight the training changes with LoRA folded in (W + s·B·A, un-padded, hub layout)."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        gathered = {n: safe_get_full_fp32_param(p) for n, p in self.model.named_parameters() if p.requires_grad}
        if mode == "adapter":
            out = lora_tensors(gathered.items(), family_of_model(self.model))
        elif mode == "merged":
            zero3 = self.cfg.learner.zero_stage == 3
            out = merged_lora_weights(self.model, dtype=self.dtype,
                                      gather=lambda ps: deepspeed.zero.GatheredParameters(ps, enabled=zero3))
            for n, t in gathered.items():  # other trainable tensors (audio encoder, when unfrozen)
                if "lora_" not in n and t is not None:
                    out[peft_to_hub(n, family_of_model(self.model))] = t.detach().to(self.dtype).cpu().clone()
        else:
            raise ValueError(f"get_weights: mode must be 'adapter' or 'merged', got {mode!r}")
        return out if self.rank == 0 else None

    def get_weights_ref(self, mode: str) -> list[Any] | None:
        """Collective. Rank 0 puts :meth:`get_weights` into the object store and returns ``[ref]`` (a list, so the
        caller receives the reference, not the tensors): the rollout actors fetch the weights from there directly."""
        import ray

        out = self.get_weights(mode)
        return [ray.put(out)] if self.rank == 0 else None

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
        """Join (or re-join) the weight-broadcast group as its rank 0."""
        from .collective import WeightGroup

        if self._weight_group is not None:
            self._weight_group.close()
        self._weight_group = WeightGroup(host, port, 0, world, backend, timeout_s)

    def _prepared_version(self, version: int, what: str) -> tuple[Any, ...]:
        prepared = self._prepared
        if prepared is None or prepared[0] != version:
            raise RuntimeError(f"{what}: policy version {version} is not prepared "
                               f"(have {prepared[0] if prepared else None})")
        return prepared

    def send_weights(self, version: int) -> dict[str, float]:
        """Broadcast the prepared weights of ``version`` to the group (the rollout actors receive at the same time)."""
        from .collective import nbytes

        prepared = self._prepared_version(version, "send_weights")
        t = time.perf_counter()
        group = self._weight_group
        group.broadcast({d: b.to(group.device) for d, b in prepared[3].items()})
        return {"bytes": float(nbytes(prepared[2])), "seconds": time.perf_counter() - t}

    def prepared_weights_ref(self, version: int) -> list[Any]:
        """``[ref]`` to the prepared weights of ``version`` in the object store: for a rollout actor that restarted
        after the broadcast (it missed it)."""
        import ray

        return [ray.put(self._prepared_version(version, "prepared_weights_ref")[1])]
