"""Tiny random checkpoints of every model family, written fully offline.

    python -m polyaudio_rl.tiny --family qwen2_5_omni --out artifacts/tiny-omni [--seed 0]
    python -m polyaudio_rl.tiny --list-families

Each family writes its own (:meth:`polyaudio_rl.core.models.ModelFamily.write_tiny`): random weights, a tokenizer
and processor built here, loadable by the same ``from_pretrained(path)`` calls as the real checkpoint, in
transformers and in vLLM. Same seed ⇒ same tensors and same files. The family is read back from the checkpoint's
``config.json``, so ``model.path=DIR`` is all a run needs.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .models import DEFAULT_FAMILY, family_names, get_family


def write_tiny(out: str | Path, seed: int = 0, family: str = DEFAULT_FAMILY, **sizes: int) -> Path:
    """Write ``family``'s tiny checkpoint to ``out`` atomically; ``sizes`` override its language-model sizes."""
    fam = get_family(family)
    unknown = set(sizes) - set(fam.tiny_sizes)
    if unknown:
        raise ValueError(f"unknown text sizes {sorted(unknown)}; known: {sorted(fam.tiny_sizes)}")
    return fam.write_tiny(Path(out), seed, **sizes)


def ensure_tiny(path: str | Path, seed: int = 0, family: str = DEFAULT_FAMILY) -> Path:
    """Write the tiny checkpoint at ``path`` unless a checkpoint is already there."""
    path = Path(path)
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return write_tiny(path, seed, family)


def library_log(out: str | Path) -> Path:
    """Send transformers' messages to ``<out>.log`` beside the checkpoint (made only when one is logged), not to the
    console: building a Qwen2.5-Omni config makes transformers check the token ids of its own default talker config,
    which lie outside that config's vocabulary — seven warnings about a part the tiny checkpoint does not have."""
    from transformers.utils import logging as hf_logging

    out = Path(out)
    log = out.with_name(out.name + ".log")
    hf_logging.disable_default_handler()  # transformers' own stderr handler (it adds it lazily, on first use)
    handler = logging.FileHandler(log, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    hf_logging.get_logger().addHandler(handler)
    return log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default=DEFAULT_FAMILY, help=f"model family (default {DEFAULT_FAMILY}); "
                    "--list-families prints them")
    ap.add_argument("--out", help="directory to write the checkpoint to")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed => same tensors)")
    ap.add_argument("--list-families", action="store_true", help="print the supported families, one a line")
    sizes = sorted({k for n in family_names() for k in get_family(n).tiny_sizes})
    for k in sizes:
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None, help=f"language model {k}")
    args = ap.parse_args(argv)
    if args.list_families:
        print("\n".join(family_names()))
        return
    if not args.out:
        ap.error("--out is required (or --list-families)")
    if args.family not in family_names():
        ap.error(f"unknown family {args.family!r}; supported: {', '.join(family_names())}")
    chosen = {k: getattr(args, k) for k in sizes if getattr(args, k) is not None}
    log = library_log(args.out)
    path = write_tiny(args.out, args.seed, args.family, **chosen)
    cfg = json.loads((path / "config.json").read_text())
    print(f"wrote tiny {args.family} to {path} (architectures {cfg.get('architectures')})"
          + (f"; library messages in {log}" if log.is_file() else ""))


if __name__ == "__main__":
    main()
