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

Report (``report.json``, ``report.md``, ``chart.png``; ``report.html``: every item with a player per clip, the answer,
the judge score and the rule verdict): per task (Table 5 layout) and overall (Table 4 layout):

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

Layout: this module loads the bench, evaluates items (``results.jsonl`` journal) and holds the CLI; the policy client
and the content builder are :mod:`eval.client`, the numbers, ``report.md`` and the chart :mod:`eval.report`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from polyaudio_rl.core.audio import AudioError, load_clip
from polyaudio_rl.core.config import EvalConfig, JudgeConfig
from polyaudio_rl.core.openai_api import api_key_from_env
from polyaudio_rl.core.schema import Sample
from rewards.judge import JudgeClient
from rewards.verifiers import verify

from .client import EndpointError, PolicyClient, question_content, resolve_model
from .report import fmt, summarize, write_report

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
    waves = [load_clip(c.audio, c.sample_rate or None, sample_id=sample.id, clip=i + 1, max_seconds=1e9)
             for i, c in enumerate(sample.clips)]
    return question_content(waves, sample.question, sample.choices, cfg, protocol or cfg.baseline_protocol)


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


# -- entry point ----------------------------------------------------------------------------------------------------
async def evaluate(data: str, policy_url: str, judge_url: str, out: str, cfg: EvalConfig, judge_cfg: JudgeConfig,
                   policy_model: str | None = None, judge_model: str | None = None, protocol: str | None = None,
                   progress: bool = True) -> dict:
    """Run (or resume) the benchmark and write the report; returns the report dict."""
    protocol = protocol or cfg.baseline_protocol
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = load_bench(data, cfg.max_items)
    if not bench.samples:
        raise ValueError(f"--data {data}: no readable items ({len(bench.bad)} unreadable rows)")
    key = api_key_from_env(cfg.api_key_env)  # the policy endpoint's bearer key (eval.serve --api-key), if any
    pm = await resolve_model(policy_url, policy_model, "polyaudio", key)
    jm = await resolve_model(judge_url, judge_model, "judge", api_key_from_env(judge_cfg.api_key_env, judge_cfg.api_key))
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
    policy = PolicyClient(policy_url, pm, cfg, key)
    try:
        records = await run_items(bench.samples, policy, judge, cfg, protocol, out_dir, progress)
    finally:
        await policy.aclose()
        await judge.aclose()
    report = summarize(records, bench.samples, bench.bad)
    report["meta"] = {**meta, "policy_retries": policy.retries, "judge_stats": judge.stats.as_dict()}
    write_report(report, out_dir, records, bench.samples)
    return report


def main(argv: list[str] | None = None) -> None:
    from polyaudio_rl.core.config import load_config

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
    print(f"PolyAudio-Bench: judge {fmt(ov['judge_100'])}/100 (mean {fmt(ov['judge_mean'], 2)}/5), rule accuracy "
          f"{fmt(ov['rule_acc'])}%, {ov['scored']}/{ov['items']} scored, {ov['failed']} failed -> {args.out}/report.md")


if __name__ == "__main__":
    main()
