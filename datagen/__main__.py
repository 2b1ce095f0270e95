"""CLI: `python -m datagen build ...` and `python -m datagen inspect DIR ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from polyaudio_rl.core.config.base import ConfigError, build as build_cfg, load_yaml, parse_override, set_dotted

from .config import PRESETS, DatagenConfig
from polyaudio_rl.core.schema import SPLITS, TASKS


def load_config(path: str | None, overrides: list[str], **cli) -> DatagenConfig:
    tree = load_yaml(path) if path else {}
    tree = tree.get("datagen", tree)
    for k, v in cli.items():
        if v is not None:
            tree[k] = v
    for o in overrides:
        key, value = parse_override(o)
        set_dotted(tree, key.removeprefix("datagen."), value, DatagenConfig)
    return build_cfg(DatagenConfig, tree, prefix="datagen")


def cmd_build(a) -> int:
    from .build import build, format_report
    from .sources.speech import EngineMissing

    try:
        cfg = load_config(a.config, a.set, preset=a.preset, seed=a.seed, workers=a.workers,
                          tasks=a.tasks.split(",") if a.tasks else None)
    except ConfigError as exc:
        print(f"datagen: config error: {exc}", file=sys.stderr)
        return 2
    try:
        rep = build(cfg, a.split, a.out, progress=not a.quiet, resume=not a.fresh)
    except EngineMissing as exc:
        print(f"datagen: {exc}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if rep.resumed:
        print(f"resumed an interrupted build: kept {rep.kept_shards} shards ({rep.kept_items} items), "
              f"generated from item {rep.resumed_at_item} of {rep.planned}")
    print(f"data card: {os.path.join(a.out, 'DATACARD.md')}")
    return 0


def cmd_inspect(a) -> int:
    import pyarrow.parquet as pq

    from .audio import decode
    from polyaudio_rl.core.schema import ARROW_SCHEMA, Sample, shard_paths

    card = os.path.join(a.dir, "DATACARD.md")
    if not os.path.isdir(a.dir):
        print(f"datagen inspect: {a.dir} is not a directory", file=sys.stderr)
        return 2
    if os.path.exists(card):
        print(open(card).read())
    else:
        print(f"(no DATACARD.md in {a.dir})")
    shards = shard_paths(a.dir)
    if not shards:
        print(f"datagen inspect: no *.parquet shards in {a.dir}", file=sys.stderr)
        return 2
    found = None
    for p in shards:
        t = pq.read_table(p, schema=ARROW_SCHEMA)
        ids = t.column("id").to_pylist()
        want = a.item if a.item else (ids[0] if ids else None)
        if want in ids:
            found = Sample.from_row(t.slice(ids.index(want), 1).to_pylist()[0])
            break
    if found is None:
        print(f"datagen inspect: item {a.item!r} not found in {len(shards)} shards", file=sys.stderr)
        return 2
    s = found
    print(f"== item {s.id} ({s.task}, {len(s.clips)} clips)")
    print(f"Q: {s.question}\nA: {s.answer}\nkey: {json.dumps(s.key)}\nrelevant clips: {s.relevant_clips}")
    if s.choices:
        print(f"choices: {s.choices}")
    for i, (c, m) in enumerate(zip(s.clips, s.metadata.get("clips", [])), 1):
        desc = m.get("transcript") or m.get("description") or ", ".join(
            f"{e['label']} {e['start']}-{e['end']} s" for e in m.get("events", []))
        print(f"  clip {i}: {c.duration:.2f} s, {m.get('kind')}, {m.get('speaker', '')} {desc}")
    if a.export:
        import soundfile as sf

        os.makedirs(a.export, exist_ok=True)
        for i, c in enumerate(s.clips, 1):
            x, sr = decode(c.audio)
            path = os.path.join(a.export, f"{s.id}-clip{i}.wav")
            sf.write(path, x, sr, subtype="PCM_16")
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datagen", description="PolyAudio multi-audio data generation")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build one split into Parquet shards + data card (resumes an interrupted "
                                     "build of the same configuration in --out)")
    b.add_argument("--split", required=True, choices=SPLITS)
    b.add_argument("--preset", choices=sorted(PRESETS), default=None, help="ci | small | paper | starter (default: ci; starter: the signal curriculum the tiny model learns, datagen/tasks/starter.py)")
    b.add_argument("--out", required=True, help="output directory (shards + DATACARD.md)")
    b.add_argument("--seed", type=int, default=None)
    b.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    b.add_argument("--tasks", default=None, help=f"comma-separated subset of: {','.join(TASKS)}")
    b.add_argument("--config", default=None, help="YAML with a datagen: section (or the section itself)")
    b.add_argument("--set", action="append", default=[], help="override, e.g. --set bench_holdout=0.3")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--fresh", action="store_true",
                   help="build from scratch even when --out holds an interrupted build of the same configuration "
                        "(by default that build is resumed: its finished shards are kept)")
    i = sub.add_parser("inspect", help="print a build's data card and one item; export its clips as WAV")
    i.add_argument("dir")
    i.add_argument("--item", default=None, help="item id (default: the first)")
    i.add_argument("--export", default=None, help="directory to write the item's clips as WAV")
    a = ap.parse_args(argv)
    return cmd_build(a) if a.cmd == "build" else cmd_inspect(a)


if __name__ == "__main__":
    raise SystemExit(main())
