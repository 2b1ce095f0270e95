"""Merge a trained PEFT LoRA adapter into the base model's weights: a full checkpoint vLLM can serve.

vLLM 0.32's own audio LLM classes have no LoRA support (the rollout engines add it with the model family's
LoRA-capable class, :mod:`polyaudio_rl.core.models.vllm_plugin`; Serve uses the family's class without LoRA), so the
evaluated policy is the base model with the
adapter folded in (W + BA·scale, PEFT's ``merge_and_unload``), written in the hub layout (``polyaudio_rl.core.weights.hub_key``
names, safetensors shards + index) next to the base config, processor and chat template. A ``merge_info.json``
records the adapter's hash: a second call with the same adapter and base reuses the merged directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from polyaudio_rl.core.atomic import atomic_dir
from polyaudio_rl.core.weights import hub_state_dict

SHARD_BYTES = 4 * 2**30


class MergeError(ValueError):
    """The adapter or base checkpoint cannot be merged; the message names the path."""


def _adapter_hash(adapter_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        p = adapter_dir / name
        if not p.is_file():
            raise MergeError(f"adapter {adapter_dir}: missing {name} (expected a PEFT adapter directory)")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _save_sharded(state: dict, out: Path) -> None:
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def merge_adapter(base: str, adapter_dir: str, out: str | None = None, dtype: str | None = None) -> str:
    """Write base + adapter merged to ``out`` (default ``<adapter_dir>.merged``); returns its path."""
    import torch
    from peft import PeftModel

    from polyaudio_rl.core.model import load_model, load_processor
    from polyaudio_rl.core.models import family_of

    adapter = Path(adapter_dir)
    digest = _adapter_hash(adapter)
    out_path = Path(out) if out else adapter.with_name(adapter.name + ".merged")
    info = {"base": str(base), "adapter": str(adapter.resolve()), "adapter_sha256_16": digest}
    if (out_path / "merge_info.json").is_file():
        try:
            if json.loads((out_path / "merge_info.json").read_text()) == info:
                return str(out_path)
        except json.JSONDecodeError:
            pass
    if dtype is None:
        cfg_path = Path(base) / "config.json"
        cfg_json = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        dtype = cfg_json.get("dtype") or cfg_json.get("torch_dtype") or "bfloat16"
        dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    model = load_model(str(base), dtype=dtype)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise MergeError(f"adapter {adapter}: cannot be applied to {base}: {exc}") from exc
    merged = peft_model.merge_and_unload()
    state = hub_state_dict(merged)
    if any("lora_" in k for k in state):
        raise MergeError(f"adapter {adapter}: LoRA tensors left after merging")
    with atomic_dir(out_path) as tmp:
        with torch.no_grad():
            _save_sharded(state, tmp)
        merged.config.save_pretrained(tmp)
        if merged.generation_config is not None:
            merged.generation_config.save_pretrained(tmp)
        load_processor(str(base)).save_pretrained(tmp)
        family_of(str(base)).write_serving_files(tmp, merged.config, state)  # e.g. Voxtral's Mistral-format files
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=1))
    return str(out_path)
