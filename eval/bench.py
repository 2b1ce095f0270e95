"""PolyAudio-Bench evaluation (paper §3.2.2, §4.1.1; Tables 4 and 5) against OpenAI-compatible endpoints.

    python -m eval.bench --data BENCH_DIR --policy URL --judge URL --out DIR
                         [--policy-model NAME] [--judge-model NAME] [--protocol native|concat|pair]
                         [--max-items N] [--concurrency K] [--config YAML] [-o eval.max_new_tokens=128 ...]

Per item: the clips go to the policy as ``input_audio`` parts (or joined, per the baseline protocol of
:mod:`eval.baselines`) followed by the question (choices rendered as in training); the answer is

* judged by :class:`rewards.judge.JudgeClient`: a 1–5 score averaged over the two paraphrased rubric prompts
  (correctness w.r.t. the clips + parsimony of clip usage), and
* rule-verified against the exact ground-truth key by :func:`rewards.verifiers.verify` (a score in [0, 1];
  "accuracy" below is the mean of that score, so partial credit — keyword F1, interval IoU, Kendall τ — counts).

Report (``report.json``, ``report.md``, ``chart.png``): per task (Table 5 layout) and overall (Table 4 layout):

    judge_mean   mean 1–5 judge score over the task's scored items
    judge_100    the same mapped linearly to 0–100: 100 · (judge_mean − 1) / 4   (1 → 0, 3 → 50, 5 → 100)
    judge_x20    20 · judge_mean (score/5 as a percentage, 1 → 20): the other common reading, for comparison
    rule_acc     100 · mean rule-verifier score
    overall      the unweighted mean over tasks of the per-task values (Table 5's caption: "column means equal the
                 overall averages"); ``overall_micro`` averages items instead.

The paper does not say how its 0–100 numbers were derived from the 1–5 judge scale; ``judge_100`` is our headline.

Robustness: requests run concurrently (``eval.concurrency``) with a tqdm bar. Every finished item is appended to
``results.jsonl`` at once; a rerun with the same ``--out`` skips items already scored (resumable after a crash) and
retries failed ones. A policy call that fails (connection error, timeout, HTTP 408/429/5xx) is retried
``eval.max_retries`` times with backoff; then — or at once on another 4xx, e.g. a clip the endpoint refuses — the
item is reported *failed* with the reason, never scored 0. The same holds when the judge cannot score an item.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import openai
from openai import AsyncOpenAI

from datagen.schema import TASKS, Sample
from polyaudio_rl.audio import AudioError, encode_wav, load_clip
from polyaudio_rl.config import EvalConfig, JudgeConfig
from polyaudio_rl.prompts import render_question

from .baselines import apply_protocol, protocol_hint

TASK_TITLES = {
    "comparison": "Comparison/Difference", "temporal_grounding": "Temporal Grounding", "needle_qa": "Needle QA",
    "speaker_linking": "Cross-clip Speaker Linking", "odd_one_out": "Odd-one-out",
    "entailment": "Multi-Audio Entailment", "common_keyword": "Common Keyword Extraction",
    "chronological_ordering": "Chronological Ordering", "captioning": "Multi-audio Captioning",
    "factual_consistency": "Factual Consistency", "counting": "Counting across clips",
}
RESULTS = "results.jsonl"


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class LoadedBench:
    samples: list[Sample]
    bad: list[dict[str, str]] = field(default_factory=list)  # rows that could not be read: {"id", "error"}


def load_bench(data_dir: str, max_items: int = 0) -> LoadedBench:
    """Rows of every ``*.parquet`` under ``data_dir`` (sorted); unreadable rows are counted, not fatal."""
    import pyarrow.parquet as pq

    paths = sorted(Path(data_dir).rglob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"--data {data_dir}: no *.parquet shards (build one: python -m datagen build --split bench)")
    out = LoadedBench([])
    seen: set[str] = set()
    for p in paths:
        for row in pq.read_table(p).to_pylist():
            rid = str(row.get("id", f"{p.name}:?"))
            try:
                s = Sample.from_row(row)
                s.validate()
                if s.id in seen:
                    raise ValueError(f"duplicate id {s.id} (also in an earlier row)")
            except Exception as exc:  # noqa: BLE001 - every malformed row is reported, none stops the run
                out.bad.append({"id": rid, "file": p.name, "error": str(exc)})
                continue
            seen.add(s.id)
            out.samples.append(s)
            if max_items and len(out.samples) >= max_items:
                return out
    return out


def build_content(sample: Sample, cfg: EvalConfig, protocol: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """The user message content (audio parts, then the question) and the rendered question text."""
    protocol = protocol or cfg.baseline_protocol
    waves = [load_clip(c.audio, c.sample_rate or None, sample_id=sample.id, clip=i + 1, max_seconds=1e9)
             for i, c in enumerate(sample.clips)]
    audios = apply_protocol(waves, protocol, cfg.silence_s)
    question = render_question(sample.question, sample.choices, cfg.answer_tag)
    hint = protocol_hint(len(waves), protocol, cfg.silence_s) if cfg.protocol_hint else ""
    text = f"{hint}\n{question}" if hint else question
    parts: list[dict[str, Any]] = [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(encode_wav(a)).decode("ascii"), "format": "wav"}}
        for a in audios
    ]
    parts.append({"type": "text", "text": text})
    return parts, question


# -- the policy client ----------------------------------------------------------------------------------------------
class EndpointError(RuntimeError):
    """A call that failed for good (after retries, or a non-retryable 4xx); the message says why."""


async def resolve_model(base_url: str, wanted: str | None, default: str, api_key: str = "EMPTY") -> str:
    """The model name to send: ``wanted``, else the endpoint's only model, else ``default`` if it is listed."""
    if wanted:
        return wanted
    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=30) as client:
        ids = [m.id async for m in client.models.list()]
    if len(ids) == 1:
        return ids[0]
    if default in ids:
        return default
    raise EndpointError(f"{base_url}: serves {ids}; say which with --policy-model/--judge-model")


class PolicyClient:
    """Chat completions with bounded retries and backoff (the ``openai`` client's own retries are off)."""

    def __init__(self, base_url: str, model: str, cfg: EvalConfig, api_key: str = "EMPTY"):
        self.base_url, self.model, self.cfg = base_url, model, cfg
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0)
        self.retries = 0

    async def answer(self, content: list[dict[str, Any]]) -> tuple[str, int]:
        """(answer text, attempts used)."""
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": content}],
                    max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature)
                text = resp.choices[0].message.content
                if text is None:
                    raise EndpointError("the reply has no message content")
                return text, attempt + 1
            except openai.APIStatusError as exc:
                msg = _error_message(exc)
                last = f"HTTP {exc.status_code}: {msg}"
                if exc.status_code not in (408, 429) and exc.status_code < 500:
                    raise EndpointError(last) from None
            except openai.APITimeoutError:
                last = f"timeout after {self.cfg.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                last = f"connection error: {exc.__cause__ or exc}"
            except (IndexError, AttributeError) as exc:
                last = f"malformed response: {exc}"
            if attempt < self.cfg.max_retries:
                self.retries += 1
                await asyncio.sleep(min(30.0, self.cfg.backoff_s * 2 ** attempt) * random.uniform(0.75, 1.25))
        raise EndpointError(f"gave up after {self.cfg.max_retries + 1} attempts: {last}")

    async def aclose(self) -> None:
        await self.client.close()


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    msg = err.get("message") if isinstance(err, dict) else None
    return str(msg or exc.message)[:500]


# -- results (resumable) --------------------------------------------------------------------------------------------
def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Latest record per item id; a torn last line (a crash mid-write) is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            out[rec["id"]] = rec
    return out


async def evaluate_item(sample: Sample, policy: PolicyClient, judge: Any, cfg: EvalConfig, protocol: str) -> dict:
    from rewards.verifiers import verify

    rec: dict[str, Any] = {"id": sample.id, "task": sample.task, "n_clips": len(sample.clips), "protocol": protocol}
    t0 = time.perf_counter()
    try:
        content, question = await asyncio.to_thread(build_content, sample, cfg, protocol)
    except AudioError as exc:
        return {**rec, "status": "failed", "stage": "input", "error": str(exc)}
    try:
        answer, attempts = await policy.answer(content)
    except EndpointError as exc:
        return {**rec, "status": "failed", "stage": "policy", "error": str(exc)}
    rec.update(answer=answer, policy_attempts=attempts)
    try:
        rule = verify(sample, answer)
        rec.update(rule_score=rule.score, rule_info={k: v for k, v in rule.info.items() if _jsonable(v)})
    except ValueError as exc:  # RewardError: the sample's key cannot be verified; the judge score still counts
        rec.update(rule_score=None, rule_info={"error": str(exc)})
    res = await judge.score(question, sample.answer, answer, n_clips=len(sample.clips),
                            relevant_clips=sample.relevant_clips)
    rec.update(judge_score=res.score, judge_per_prompt=res.per_prompt, latency_s=round(time.perf_counter() - t0, 3))
    if res.score is None:
        return {**rec, "status": "failed", "stage": "judge", "error": res.error}
    return {**rec, "status": "ok"}


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


async def run_items(samples: Sequence[Sample], policy: PolicyClient, judge: Any, cfg: EvalConfig, protocol: str,
                    out: Path, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Evaluate every sample not already scored in ``out/results.jsonl``; returns the latest records."""
    from tqdm.auto import tqdm

    path = out / RESULTS
    done = read_results(path)
    todo = [s for s in samples if done.get(s.id, {}).get("status") != "ok"]
    sem = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="PolyAudio-Bench", unit="item",
               disable=not progress)
    with path.open("a") as fh:
        async def one(s: Sample) -> None:
            async with sem:
                rec = await evaluate_item(s, policy, judge, cfg, protocol)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            done[s.id] = rec
            bar.update(1)
            bar.set_postfix(failed=sum(1 for r in done.values() if r.get("status") == "failed"))

        await asyncio.gather(*(one(s) for s in todo))
    bar.close()
    return done


# -- the report -----------------------------------------------------------------------------------------------------
def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def judge_to_100(mean_score: float | None) -> float | None:
    """1–5 → 0–100 linearly: 100 · (s − 1) / 4."""
    return None if mean_score is None else 100.0 * (mean_score - 1.0) / 4.0


def summarize(records: dict[str, dict[str, Any]], samples: Sequence[Sample], bad_rows: Sequence[dict] = ()) -> dict:
    """Per-task and overall numbers from the records of ``samples`` (see the module docstring)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_task[s.task].append(records.get(s.id) or {"id": s.id, "status": "missing"})
    tasks: dict[str, dict[str, Any]] = {}
    for task in [t for t in TASKS if t in by_task] + sorted(t for t in by_task if t not in TASKS):
        recs = by_task[task]
        ok = [r for r in recs if r.get("status") == "ok"]
        jm = _mean([r["judge_score"] for r in ok])
        rule = [r["rule_score"] for r in recs if r.get("rule_score") is not None and r.get("status") == "ok"]
        tasks[task] = {
            "title": TASK_TITLES.get(task, task), "items": len(recs), "scored": len(ok),
            "failed": sum(1 for r in recs if r.get("status") == "failed"),
            "missing": sum(1 for r in recs if r.get("status") == "missing"),
            "judge_mean": jm, "judge_100": judge_to_100(jm), "judge_x20": None if jm is None else 20.0 * jm,
            "rule_acc": None if not rule else 100.0 * _mean(rule),
        }
    all_ok = [r for recs in by_task.values() for r in recs if r.get("status") == "ok"]

    def macro(key: str) -> float | None:
        vals = [t[key] for t in tasks.values() if t[key] is not None]
        return _mean(vals)

    jm_micro = _mean([r["judge_score"] for r in all_ok])
    failures: dict[str, int] = defaultdict(int)
    for recs in by_task.values():
        for r in recs:
            if r.get("status") == "failed":
                failures[r.get("stage", "?")] += 1
    return {
        "tasks": tasks,
        "overall": {
            "items": len(samples), "scored": len(all_ok), "failed": sum(failures.values()),
            "failed_by_stage": dict(failures), "bad_rows": len(bad_rows),
            "judge_mean": macro("judge_mean"), "judge_100": macro("judge_100"), "judge_x20": macro("judge_x20"),
            "rule_acc": macro("rule_acc"),
            "overall_micro": {"judge_mean": jm_micro, "judge_100": judge_to_100(jm_micro),
                              "rule_acc": None if not all_ok else 100.0 * _mean([r["rule_score"] for r in all_ok])},
        },
        "failed_items": [{"id": r["id"], "task": r.get("task"), "stage": r.get("stage"), "error": r.get("error")}
                         for recs in by_task.values() for r in recs if r.get("status") == "failed"],
        "bad_rows": list(bad_rows),
        "normalisation": "judge_100 = 100 * (mean judge score - 1) / 4 (1..5 -> 0..100); judge_x20 = 20 * mean; "
                         "overall = unweighted mean over tasks",
    }


def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def render_markdown(report: dict) -> str:
    meta, ov = report.get("meta", {}), report["overall"]
    lines = [
        f"# PolyAudio-Bench — {meta.get('policy_model', 'policy')} ({meta.get('protocol', 'native')})", "",
        f"Policy `{meta.get('policy_url', '')}` · judge `{meta.get('judge_model', '')}` at `{meta.get('judge_url', '')}` "
        f"· prompts {meta.get('judge_prompts', [])} averaged.", "",
        "Judge score 1–5 (mean over the paraphrased prompts), **normalised 0–100 as 100·(score−1)/4**; "
        "rule accuracy = 100 · mean rule-verifier score against the ground-truth key.", "",
        "## Overall (Table 4 layout)", "",
        "| Benchmark | Judge (0–100) | Judge mean (1–5) | Rule acc. (%) | Scored | Failed |",
        "|---|---|---|---|---|---|",
        f"| PolyAudio-Bench | {_fmt(ov['judge_100'])} | {_fmt(ov['judge_mean'], 2)} | {_fmt(ov['rule_acc'])} | "
        f"{ov['scored']}/{ov['items']} | {ov['failed']} |", "",
        "## Per task (Table 5 layout)", "",
        "| Task | Judge (0–100) | Judge mean (1–5) | Rule acc. (%) | Scored | Failed |", "|---|---|---|---|---|---|",
    ]
    for t in report["tasks"].values():
        lines.append(f"| {t['title']} | {_fmt(t['judge_100'])} | {_fmt(t['judge_mean'], 2)} | {_fmt(t['rule_acc'])} | "
                     f"{t['scored']}/{t['items']} | {t['failed']} |")
    lines += ["", f"Column means: overall = unweighted mean over tasks (item-weighted: judge "
                  f"{_fmt(ov['overall_micro']['judge_100'])}, rule {_fmt(ov['overall_micro']['rule_acc'])}).", ""]
    if report["failed_items"] or report["bad_rows"]:
        lines += ["## Not scored", "", "Failed items are excluded from the means (never counted as 0).", ""]
        for f in report["failed_items"][:50]:
            lines.append(f"- `{f['id']}` ({f['task']}, {f['stage']}): {str(f['error'])[:200]}")
        for b in report["bad_rows"][:50]:
            lines.append(f"- unreadable row `{b['id']}` in {b['file']}: {b['error'][:200]}")
        lines.append("")
    return "\n".join(lines)


def plot_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].values())
    names = [t["title"] for t in tasks] + ["Overall"]
    judge = [t["judge_100"] for t in tasks] + [report["overall"]["judge_100"]]
    rule = [t["rule_acc"] for t in tasks] + [report["overall"]["rule_acc"]]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], [v if v is not None else 0 for v in judge], w, label="Judge (0–100)")
    ax.bar([x + w / 2 for x in xs], [v if v is not None else 0 for v in rule], w, label="Rule accuracy (%)")
    for off, vals in ((-w / 2, judge), (w / 2, rule)):
        for x, v in zip(xs, vals):
            ax.text(x + off, (v or 0) + 1, "n/a" if v is None else f"{v:.0f}", ha="center", fontsize=6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score")
    meta = report.get("meta", {})
    ax.set_title(f"PolyAudio-Bench per task — {meta.get('policy_model', '')} ({meta.get('protocol', 'native')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    plot_chart(report, out / "chart.png")


# -- entry point ----------------------------------------------------------------------------------------------------
async def evaluate(data: str, policy_url: str, judge_url: str, out: str, cfg: EvalConfig, judge_cfg: JudgeConfig,
                   policy_model: str | None = None, judge_model: str | None = None, protocol: str | None = None,
                   progress: bool = True) -> dict:
    """Run (or resume) the benchmark and write the report; returns the report dict."""
    from rewards.judge import JudgeClient

    protocol = protocol or cfg.baseline_protocol
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = load_bench(data, cfg.max_items)
    if not bench.samples:
        raise ValueError(f"--data {data}: no readable items ({len(bench.bad)} unreadable rows)")
    pm = await resolve_model(policy_url, policy_model, "polyaudio")
    jm = await resolve_model(judge_url, judge_model, "judge")
    meta = {"data": str(data), "policy_url": policy_url, "policy_model": pm, "judge_url": judge_url,
            "judge_model": jm, "protocol": protocol, "judge_prompts": list(judge_cfg.prompts),
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}
    run_file = out_dir / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        diff = [k for k in ("policy_model", "judge_model", "protocol", "judge_prompts") if old.get(k) != meta[k]]
        if diff:
            raise ValueError(f"--out {out}: holds results of another run (differs in {', '.join(diff)}); "
                             "use a new --out directory")
    run_file.write_text(json.dumps(meta, indent=1))
    jcfg = JudgeConfig(**{**asdict(judge_cfg), "base_url": judge_url, "model": jm})
    judge = JudgeClient(jcfg)
    policy = PolicyClient(policy_url, pm, cfg)
    try:
        records = await run_items(bench.samples, policy, judge, cfg, protocol, out_dir, progress)
    finally:
        await policy.aclose()
        await judge.aclose()
    report = summarize(records, bench.samples, bench.bad)
    report["meta"] = {**meta, "policy_retries": policy.retries, "judge_stats": judge.stats.as_dict()}
    write_report(report, out_dir)
    return report


def main(argv: list[str] | None = None) -> None:
    from polyaudio_rl.config import load_config

    ap = argparse.ArgumentParser(description="PolyAudio-Bench: judge score (1-5 -> 0-100) and rule accuracy per task.")
    ap.add_argument("--data", required=True, help="bench build directory (Parquet shards of the bench split)")
    ap.add_argument("--policy", required=True, help="policy endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--judge", required=True, help="judge endpoint base URL")
    ap.add_argument("--out", required=True, help="output directory (results.jsonl, report.json/.md, chart.png)")
    ap.add_argument("--policy-model", default=None, help="model name at --policy (default: its only model / 'polyaudio')")
    ap.add_argument("--judge-model", default=None, help="model name at --judge (default: its only model / 'judge')")
    ap.add_argument("--protocol", default=None, choices=["native", "concat", "pair"], help="baseline protocol (§4.1.2)")
    ap.add_argument("--max-items", type=int, default=None, help="evaluate at most N items (eval.max_items)")
    ap.add_argument("--concurrency", type=int, default=None, help="requests in flight (eval.concurrency)")
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override, e.g. eval.max_new_tokens=128")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.override)
    if args.max_items is not None:
        cfg.eval.max_items = args.max_items
    if args.concurrency is not None:
        cfg.eval.concurrency = args.concurrency
    report = asyncio.run(evaluate(args.data, args.policy, args.judge, args.out, cfg.eval, cfg.reward.judge,
                                  args.policy_model, args.judge_model, args.protocol, not args.no_progress))
    ov = report["overall"]
    print(f"PolyAudio-Bench: judge {_fmt(ov['judge_100'])}/100 (mean {_fmt(ov['judge_mean'], 2)}/5), rule accuracy "
          f"{_fmt(ov['rule_acc'])}%, {ov['scored']}/{ov['items']} scored, {ov['failed']} failed -> {args.out}/report.md")


if __name__ == "__main__":
    main()
