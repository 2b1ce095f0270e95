"""The data card written next to every build: datacard.json (machine), DATACARD.md (human), datacard.png (plots)."""
from __future__ import annotations

import json
import os

from .config import DatagenConfig
from .sources.speech import roster, split_roster

HOLDOUT_NOTE = (
    "Bench is disjoint from train/pref in speakers, sentences and sound files: per (engine, gender) the speakers "
    "with the smallest stable hash (share datagen.bench_holdout) speak only in bench; names, places and countable "
    "items of the word banks are split the same way, and every spoken sentence contains one of them, so no bench "
    "sentence can occur in train/pref; per event label the sound files are split by a stable hash of their path "
    "(a label with one file goes wholly to one side)."
)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_card(out: str, rep, cfg: DatagenConfig) -> dict:
    from dataclasses import asdict

    d = rep.as_dict()
    sp = split_roster(roster(cfg), cfg.bench_holdout)[rep.split]
    d["speaker_roster"] = [{"id": s.id, "engine": s.engine, "gender": s.gender, "accent": s.accent,
                            "licence": s.licence} for s in sp]
    d["holdout"] = HOLDOUT_NOTE
    d["config"] = asdict(cfg)
    from .tasks.base import GENERATOR_VERSION

    d["generator_version"] = GENERATOR_VERSION
    _atomic_write(os.path.join(out, "datacard.json"), json.dumps(d, indent=1, sort_keys=True).encode())
    _atomic_write(os.path.join(out, "DATACARD.md"), render_markdown(d).encode())
    try:
        _plot(out, d, rep.durations)
    except Exception as exc:  # a plot is a convenience, never a reason to lose a build
        print(f"[datagen] could not draw datacard.png: {exc}")
    return d


def render_markdown(d: dict) -> str:
    ks = sorted({int(k) for c in d["counts"].values() for k in c})
    du = d["durations"]
    out = [f"# PolyAudio data card: {d['split']} ({d['preset']} preset, seed {d['seed']})", "",
           f"{d['written']} items written of {d['planned']} planned; {d['skipped']} skipped. "
           f"Generator {d.get('generator_version', '?')}. Build took {d['build_seconds']} s on {d['workers']} workers.",
           "", *(_resume_lines(d)), "## Items per task and clip count", "",
           "| task | " + " | ".join(f"{k} clips" for k in ks) + " | total | skipped |",
           "|---|" + "---|" * (len(ks) + 2)]
    for t in sorted(set(d["counts"]) | set(d.get("rejects_by_task", {}))):
        c = d["counts"].get(t, {})
        out.append(f"| {t} | " + " | ".join(str(c.get(str(k), 0)) for k in ks) + f" | {sum(c.values())} | "
                   f"{d.get('rejects_by_task', {}).get(t, 0)} |")
    out += ["", f"Clip-count histogram: {d['clip_count_histogram']}", "",
            f"## Durations\n\n{du['clips']} clips; mean {du['mean']} s, median {du['p50']} s, min {du['min']} s, "
            f"max {du['max']} s; total {du['total_hours']} h. Clip kinds: {d['clip_kinds']}.", "",
            "## Skipped items", ""]
    out += [f"- {r}: {n} (e.g. {d['reject_examples'].get(r, '')})" for r, n in d["rejects"].items()] or ["- none"]
    out += [f"- manifest rows skipped, {r}: {v['rows']} (e.g. {v['example']})"
            for r, v in d.get("manifest_rejects", {}).items()]
    out += ["", "## Speakers", ""]
    out += [f"- {s['id']} ({s['gender']}, {s['accent']}; {s['licence']}): {d['speakers'].get(s['id'], 0)} clips"
            for s in d.get("speaker_roster", [])]
    out += ["", "## Sound events (label: placed events)", "",
            ", ".join(f"{k}: {v}" for k, v in d["event_labels"].items()) or "none", "",
            "## Sources and licences (clips)", ""]
    out += [f"- {k or '(none)'}: {v}" for k, v in sorted(d["licences"].items())]
    out += ["", "## Held-out bench material", "", d.get("holdout", ""), ""]
    if d.get("missing_source_files"):
        out += [f"Files listed by packages but missing on disk (never used): {len(d['missing_source_files'])}", ""]
    return "\n".join(out)


def _resume_lines(d: dict) -> list[str]:
    if not d.get("resumed"):
        return []
    return [f"Resumed: this build was interrupted ({d.get('resumes', 1)} time(s)) and completed by re-running it: "
            f"{d['kept_shards']} finished shards ({d['kept_items']} items) were kept after their checksums were "
            f"verified, items {d['resumed_at_item']}..{d['planned'] - 1} of the plan were generated again; no item is "
            "missing or duplicated (items are deterministic per seed, split, task and index). The build time above "
            "is the last run's.", ""]


def _plot(out: str, d: dict, durations: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    tasks = list(d["counts"])
    ks = sorted({int(k) for c in d["counts"].values() for k in c})
    bottom = [0] * len(tasks)
    for k in ks:
        vals = [d["counts"][t].get(str(k), 0) for t in tasks]
        ax[0].barh(tasks, vals, left=bottom, label=f"{k} clips")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax[0].legend(fontsize=7)
    ax[0].set_title("items per task and clip count")
    ax[1].hist(durations or [0], bins=30)
    ax[1].set_title("clip duration (s)")
    kinds = d["clip_kinds"]
    ax[2].bar(list(kinds), list(kinds.values()))
    ax[2].set_title("clips by kind")
    fig.suptitle(f"PolyAudio {d['split']} ({d['preset']}): {d['written']} items")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "datacard.png.tmp.png"), dpi=80)
    plt.close(fig)
    os.replace(os.path.join(out, "datacard.png.tmp.png"), os.path.join(out, "datacard.png"))
