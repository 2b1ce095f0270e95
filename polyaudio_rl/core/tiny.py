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
    path = write_tiny(args.out, args.seed, args.family, **chosen)
    cfg = json.loads((path / "config.json").read_text())
    print(f"wrote tiny {args.family} to {path} (architectures {cfg.get('architectures')})")


if __name__ == "__main__":
    main()
