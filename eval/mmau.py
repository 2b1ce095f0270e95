"""MMAU-Pro (multi-audio subset) and MMAU (single audio, test-mini/test) evaluation.

    python -m eval.mmau pro  --data test.parquet [--audio-root DIR] [--all] --policy URL --out DIR
    python -m eval.mmau mmau --data mmau-test-mini.json [--audio-root DIR] --policy URL --out DIR
         [--match string|embedding --embed-url URL --embed-model NAME] [--protocol native|concat|pair]

Formats (as released):

* MMAU-Pro: a Parquet file, one row per question: ``id``, ``audio_path`` (a *list* of paths, relative to the
  Parquet file's folder or ``--audio-root``), ``question``, ``choices`` (list), ``answer`` (the choice text),
  ``category`` (and more, kept in ``extra``). The multi-audio subset is the rows with more than one audio path
  (the paper: 456 items with 2–3 clips). Rows of the open-ended / instruction-following categories have no
  choices and are skipped with a count: this module scores the closed-form questions.
* MMAU: a JSON list of ``{"id", "audio_id" (path), "question", "choices", "answer", "task": sound|music|speech,
  "difficulty", "sub-category", ...}``; predictions are written back in that format with ``model_prediction``
  (what the official ``evaluation.py`` reads, and what the MMAU *test* server takes — test labels are hidden).

Choice matching:

* ``string`` — :func:`match_choice`: the prediction is exactly a choice (case-insensitive), or names exactly one
  option letter ("B", "(B)", "Answer: B", "option B"), or — MMAU's official ``string_match`` — contains all words of
  exactly one choice and no word that only other choices have. Anything else (hedging, two options) is wrong.
* ``embedding`` — the official MMAU-Pro closed-form metric: the prediction and every choice are embedded through an
  OpenAI-compatible ``/v1/embeddings`` endpoint (the official script: NV-Embed-v2), L2-normalised, and the most
  cosine-similar choice is the prediction; correct when it equals ``answer``.

Comparability: MMAU-Pro multi-audio accuracy with ``--match embedding`` against NV-Embed-v2 on the full released
multi-audio subset under the ``native`` protocol is the paper's Table 4 metric; ``string`` matching is stricter (it
never guesses for an off-choice answer) and not comparable. MMAU ``string`` on test-mini uses the official
``string_match`` rule (comparable to published test-mini numbers); Table 7 reports MMAU-*test*, whose labels are
hidden: submit ``predictions.json`` to the MMAU server for that.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from polyaudio_rl.core.audio import AudioError, load_clip
from polyaudio_rl.core.config import EvalConfig
from polyaudio_rl.core.openai_api import api_key_from_env, make_client
from rewards.extract import extract_answer

from .client import EndpointError, PolicyClient, question_content, resolve_model

LETTERS = "ABCDEFGHIJ"


@dataclass
class MCQItem:
    id: str
    audios: list[str]
    question: str
    choices: list[str]
    answer: str
    category: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loaded:
    items: list[MCQItem]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    bad: list[dict[str, str]] = field(default_factory=list)


def _as_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return list(v)


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (root / p))


def _check(item: MCQItem, where: str) -> None:
    if not item.question:
        raise ValueError(f"{where}: empty question")
    if item.answer not in item.choices:
        raise ValueError(f"{where}: answer {item.answer!r} is not one of the choices {item.choices}")


def load_mmau_pro(path: str, audio_root: str | None = None, multi_audio_only: bool = True) -> Loaded:
    """MMAU-Pro rows; with ``multi_audio_only`` just the rows with more than one audio."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MMAU-Pro file not found: {p}")
    root = Path(audio_root) if audio_root else p.parent
    table = pq.read_table(p)
    missing = [c for c in ("audio_path", "question", "answer") if c not in table.column_names]
    if missing:
        raise ValueError(f"{p}: not an MMAU-Pro parquet: missing columns {missing} (has {table.column_names})")
    out = Loaded([])
    skipped: dict[str, int] = defaultdict(int)
    for i, row in enumerate(table.to_pylist()):
        rid = str(row.get("id") or f"row{i}")
        audios = [_resolve(a, root) for a in _as_list(row.get("audio_path")) if a]
        if multi_audio_only and len(audios) < 2:
            skipped["single audio (not in the multi-audio subset)"] += 1
            continue
        choices = [str(c) for c in _as_list(row.get("choices")) if c is not None]
        if len(choices) < 2:
            skipped[f"no choices (category {row.get('category')!r}: open-ended, not scored here)"] += 1
            continue
        item = MCQItem(rid, audios, str(row.get("question") or ""), choices, str(row.get("answer") or ""),
                       str(row.get("category") or "unknown"),
                       {k: v for k, v in row.items() if k not in ("audio_path", "question", "choices", "answer")})
        try:
            _check(item, f"MMAU-Pro {rid}")
        except ValueError as exc:
            out.bad.append({"id": rid, "error": str(exc)})
            continue
        out.items.append(item)
    out.skipped = dict(skipped)
    return out


def load_mmau(path: str, audio_root: str | None = None) -> Loaded:
    """MMAU test-mini/test JSON (a list of items with ``audio_id``); category = ``task`` (sound/music/speech)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MMAU file not found: {p}")
    data = json.loads(p.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of MMAU items")
    root = Path(audio_root) if audio_root else p.parent
    out = Loaded([])
    for i, row in enumerate(data):
        rid = str(row.get("id") or f"row{i}")
        try:
            item = MCQItem(rid, [_resolve(row["audio_id"], root)], str(row["question"]),
                           [str(c) for c in row["choices"]], str(row.get("answer", "")), str(row.get("task", "unknown")),
                           dict(row))
            if item.answer:  # MMAU-test has no labels: predictions only
                _check(item, f"MMAU {rid}")
        except (KeyError, TypeError, ValueError) as exc:
            out.bad.append({"id": rid, "error": f"MMAU {rid}: {exc}" if not str(exc).startswith("MMAU") else str(exc)})
            continue
        out.items.append(item)
    return out


# -- matching -------------------------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's official rule: all answer words in the prediction, and no word that only incorrect choices have."""
    pred, ans = _words(prediction), _words(answer)
    if not pred:
        return False
    wrong: set[str] = set()
    for c in choices:
        cw = _words(c)
        if cw != ans:
            wrong |= cw - ans
    return ans <= pred and pred.isdisjoint(wrong)


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-J])\)?\s*(?:[.:)\]]|$)"),                       # "B", "(B)", "B.", "B) text"
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-J])\)?(?![\w])"),
    re.compile(r"\(([A-J])\)"),
]


def match_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the one choice the prediction picks (string matching), or None."""
    text = extract_answer(prediction).text if prediction else ""
    text = (text or prediction or "").strip()
    if not text:
        return None
    low = text.lower().rstrip(".")
    exact = [i for i, c in enumerate(choices) if c.strip().lower().rstrip(".") == low]
    if len(exact) == 1:
        return exact[0]
    n = len(choices)
    for pat in _LETTER_PATTERNS:
        letters = {m.group(1) for m in pat.finditer(text)}
        letters = {x for x in letters if LETTERS.index(x) < n}
        if len(letters) == 1:
            return LETTERS.index(letters.pop())
        if len(letters) > 1:
            return None
    hits = [i for i, c in enumerate(choices) if mmau_string_match(c, text, choices)]
    return hits[0] if len(hits) == 1 else None


Embedder = Callable[[list[str]], Awaitable[list[list[float]]]]


def openai_embedder(base_url: str, model: str, api_key: str = "EMPTY", timeout_s: float = 60.0) -> Embedder:
    """An :data:`Embedder` over an OpenAI-compatible ``/v1/embeddings`` endpoint."""
    client = make_client(base_url, api_key, timeout_s, max_retries=3)  # the openai client's own retries

    async def embed(texts: list[str]) -> list[list[float]]:
        resp = await client.embeddings.create(model=model, input=texts)
        return [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]

    return embed


async def match_choice_embedding(prediction: str, choices: Sequence[str], embed: Embedder) -> tuple[int, float]:
    """(index of the most cosine-similar choice, its similarity x 100), as the official MMAU-Pro script."""
    vecs = await embed([prediction or " "] + list(choices))
    if len(vecs) != len(choices) + 1:
        raise EndpointError(f"embeddings endpoint returned {len(vecs)} vectors for {len(choices) + 1} inputs")

    def unit(v: Sequence[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / n for x in v]

    p = unit(vecs[0])
    sims = [sum(a * b for a, b in zip(p, unit(v))) * 100 for v in vecs[1:]]
    best = max(range(len(sims)), key=sims.__getitem__)
    return best, sims[best]


# -- scoring ----------------------------------------------------------------------------------------------------------
async def score_predictions(items: Sequence[MCQItem], predictions: dict[str, str | None], method: str = "string",
                            embed: Embedder | None = None) -> dict[str, Any]:
    """Accuracy overall and per category over items that have a prediction (failed ones are counted apart)."""
    per: dict[str, list[bool]] = defaultdict(list)
    rows = []
    failed = 0
    for it in items:
        pred = predictions.get(it.id)
        if pred is None:
            failed += 1
            continue
        if method == "embedding":
            if embed is None:
                raise ValueError("embedding matching needs an embeddings endpoint (eval.embed_url)")
            idx, conf = await match_choice_embedding(pred, it.choices, embed)
        elif method == "string":
            idx, conf = match_choice(pred, it.choices), None
        else:
            raise ValueError(f"unknown matching method {method!r} (string or embedding)")
        matched = it.choices[idx] if idx is not None else None
        ok = matched is not None and matched.strip().lower() == it.answer.strip().lower()
        per[it.category].append(ok)
        rows.append({"id": it.id, "category": it.category, "prediction": pred, "matched": matched,
                     "answer": it.answer, "correct": ok, "similarity": conf})
    allv = [v for vs in per.values() for v in vs]
    return {
        "method": method, "items": len(items), "scored": len(allv), "failed": failed,
        "accuracy": 100.0 * sum(allv) / len(allv) if allv else None,
        "per_category": {c: {"n": len(v), "accuracy": 100.0 * sum(v) / len(v)} for c, v in sorted(per.items())},
        # MMAU reports the average over its three categories (Table 7 "Average")
        "category_mean": (sum(100.0 * sum(v) / len(v) for v in per.values()) / len(per)) if per else None,
        "rows": rows,
    }


def _content(item: MCQItem, cfg: EvalConfig, protocol: str) -> list[dict[str, Any]]:
    waves = [load_clip(a, None, sample_id=item.id, clip=i + 1, max_seconds=1e9) for i, a in enumerate(item.audios)]
    return question_content(waves, item.question, item.choices, cfg, protocol)[0]


async def predict(items: Sequence[MCQItem], policy: PolicyClient, cfg: EvalConfig, protocol: str,
                  progress: bool = True) -> tuple[dict[str, str | None], dict[str, str]]:
    """The policy's answer per item (None when it failed) and the failure reasons."""
    from tqdm.auto import tqdm

    sem = asyncio.Semaphore(cfg.concurrency)
    preds: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    bar = tqdm(total=len(items), desc="MMAU", unit="item", disable=not progress)

    async def one(it: MCQItem) -> None:
        async with sem:
            try:
                content = await asyncio.to_thread(_content, it, cfg, protocol)
                preds[it.id], _ = await policy.answer(content)
            except (AudioError, EndpointError) as exc:
                preds[it.id] = None
                errors[it.id] = str(exc)
        bar.update(1)

    await asyncio.gather(*(one(it) for it in items))
    bar.close()
    return preds, errors


async def evaluate(kind: str, data: str, policy_url: str, out: str, cfg: EvalConfig, *, audio_root: str | None = None,
                   all_rows: bool = False, policy_model: str | None = None, protocol: str | None = None,
                   progress: bool = True) -> dict[str, Any]:
    protocol = protocol or cfg.baseline_protocol
    loaded = load_mmau_pro(data, audio_root, not all_rows) if kind == "pro" else load_mmau(data, audio_root)
    if cfg.max_items:
        loaded.items = loaded.items[: cfg.max_items]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = api_key_from_env(cfg.api_key_env)  # the endpoint's bearer key (eval.serve --api-key), if any
    model = await resolve_model(policy_url, policy_model, "polyaudio", key)
    policy = PolicyClient(policy_url, model, cfg, key)
    embed = openai_embedder(cfg.embed_url, cfg.embed_model) if cfg.mmau_match == "embedding" else None
    try:
        preds, errors = await predict(loaded.items, policy, cfg, protocol, progress)
    finally:
        await policy.aclose()
    report = await score_predictions(loaded.items, preds, cfg.mmau_match, embed)
    report.update(benchmark="MMAU-Pro (multi-audio)" if kind == "pro" and not all_rows else
                  ("MMAU-Pro" if kind == "pro" else "MMAU"), data=data, policy_model=model, protocol=protocol,
                  skipped=loaded.skipped, bad_rows=loaded.bad, errors=errors)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    if kind == "mmau":  # the official prediction format
        (out_dir / "predictions.json").write_text(json.dumps(
            [{**it.extra, "model_prediction": preds.get(it.id) or ""} for it in loaded.items], indent=1))
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    lines = [f"# {report['benchmark']} — {report.get('policy_model', '')} ({report.get('protocol', 'native')})", "",
             f"Choice matching: **{report['method']}**. Accuracy {'—' if acc is None else f'{acc:.1f}'}% over "
             f"{report['scored']}/{report['items']} items ({report['failed']} failed, not counted).", "",
             "| Category | n | Accuracy (%) |", "|---|---|---|"]
    for c, v in report["per_category"].items():
        lines.append(f"| {c} | {v['n']} | {v['accuracy']:.1f} |")
    if report.get("category_mean") is not None:
        lines.append(f"| *mean over categories* | | {report['category_mean']:.1f} |")
    for reason, n in (report.get("skipped") or {}).items():
        lines.append(f"\nSkipped {n} rows: {reason}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from polyaudio_rl.core.config import load_config

    ap = argparse.ArgumentParser(description="MMAU-Pro multi-audio / MMAU single-audio accuracy of a policy endpoint.")
    ap.add_argument("kind", choices=["pro", "mmau"], help="pro: MMAU-Pro parquet; mmau: MMAU test-mini/test JSON")
    ap.add_argument("--data", required=True, help="the benchmark file")
    ap.add_argument("--audio-root", default=None, help="folder the audio paths are relative to (default: the file's)")
    ap.add_argument("--all", action="store_true", help="MMAU-Pro: every closed-form row, not only the multi-audio ones")
    ap.add_argument("--policy", required=True, help="policy endpoint base URL")
    ap.add_argument("--policy-model", default=None, help="model name at --policy")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--match", default=None, choices=["string", "embedding"], help="eval.mmau_match")
    ap.add_argument("--embed-url", default=None, help="eval.embed_url")
    ap.add_argument("--embed-model", default=None, help="eval.embed_model")
    ap.add_argument("--protocol", default=None, choices=["native", "concat", "pair"], help="baseline protocol")
    ap.add_argument("--config", default=None, help="YAML config")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override")
    args = ap.parse_args(argv)
    overrides = list(args.override)
    for key, val in (("mmau_match", args.match), ("embed_url", args.embed_url), ("embed_model", args.embed_model)):
        if val:
            overrides.append(f"eval.{key}={val}")
    cfg = load_config(args.config, overrides)
    rep = asyncio.run(evaluate(args.kind, args.data, args.policy, args.out, cfg.eval, audio_root=args.audio_root,
                               all_rows=args.all, policy_model=args.policy_model, protocol=args.protocol))
    print(render_markdown(rep))


if __name__ == "__main__":
    main()
