"""Load on the policy endpoint: N concurrent ``openai`` clients sending 3-clip chat requests.

    python benchmarks/serve_load.py [--url http://HOST:PORT/v1] [--levels 1,4,16] [--requests 4] [--clips 3]
                                    [--max-tokens 16] [--out artifacts/bench/serve_load] [-o serve.max_ongoing_requests=4]

Without ``--url`` it starts ``eval.serve`` in this process on the checkpoint of ``--config`` (default: the tiny one),
with a random API key, and stops it at the end; with ``--url`` the key is read from ``POLYAUDIO_API_KEY`` (or
``--api-key-env``). At each concurrency level N, N clients (one ``openai.AsyncOpenAI`` each, no client retries) send
``--requests`` requests one after another, all N at once. Per level: throughput (answered requests/s and completion
tokens/s), p50/p99 latency of answered requests, refusals (429/503 back-pressure, with their Retry-After), 5xx and
other errors. Prints a table and writes ``serve_load.json`` + ``serve_load.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import openai  # noqa: E402

from polyaudio_rl.core.net import free_port  # noqa: E402


def _content(i: int, n_clips: int) -> list[dict]:
    from polyaudio_rl.core.openai_api import build_content

    sr, audios = 16000, []
    for k in range(n_clips):
        t = np.arange(int((1.0 + 0.5 * ((i + k) % 3)) * sr)) / sr
        audios.append((0.3 * np.sin(2 * np.pi * 220.0 * (k + 1 + i % 5) * t)).astype(np.float32))
    return build_content(audios, f"Which of the {n_clips} clips has the highest pitch?")


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


async def run_level(url: str, key: str, model: str, n: int, requests: int, n_clips: int, max_tokens: int,
                    timeout_s: float) -> dict:
    contents = [_content(i, n_clips) for i in range(8)]
    lat: list[float] = []
    tokens = refused = five_xx = other = 0
    retry_after: set[str] = set()
    errors: list[str] = []

    async def client_loop(c: int) -> None:
        nonlocal tokens, refused, five_xx, other
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=timeout_s) as client:
            for r in range(requests):
                t0 = time.perf_counter()
                try:
                    resp = await client.chat.completions.create(
                        model=model, max_tokens=max_tokens, temperature=1.0, seed=c * 1000 + r,
                        messages=[{"role": "user", "content": contents[(c + r) % len(contents)]}])
                    lat.append(time.perf_counter() - t0)
                    tokens += resp.usage.completion_tokens if resp.usage else 0
                except openai.APIStatusError as exc:
                    if exc.status_code in (429, 503) and exc.response.headers.get("retry-after"):
                        refused += 1
                        retry_after.add(exc.response.headers["retry-after"])
                    elif exc.status_code >= 500:
                        five_xx += 1
                        errors.append(f"HTTP {exc.status_code}: {str(exc)[:200]}")
                    else:
                        other += 1
                        errors.append(f"HTTP {exc.status_code}: {str(exc)[:200]}")
                except openai.APIError as exc:  # connection errors, timeouts (a hang ends here)
                    other += 1
                    errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop(c) for c in range(n)))
    wall = time.perf_counter() - t0
    return {"concurrency": n, "sent": n * requests, "ok": len(lat), "refused_429_503": refused, "errors_5xx": five_xx,
            "errors_other": other, "retry_after": sorted(retry_after), "wall_s": wall,
            "requests_per_s": len(lat) / wall, "tokens_per_s": tokens / wall,
            "p50_s": _pct(lat, 50), "p99_s": _pct(lat, 99), "mean_s": statistics.fmean(lat) if lat else None,
            "first_errors": errors[:5]}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["concurrency"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(xs, [r["requests_per_s"] for r in rows], "o-", label="answered req/s")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent clients")
    a.set_ylabel("requests / s")
    a2 = a.twinx()
    a2.bar(xs, [r["refused_429_503"] + r["errors_5xx"] + r["errors_other"] for r in rows], width=[x * 0.3 for x in xs],
           alpha=0.3, color="red", label="refused + errors")
    a2.set_ylabel("refused + errors")
    a.set_title("throughput")
    b.plot(xs, [r["p50_s"] for r in rows], "o-", label="p50")
    b.plot(xs, [r["p99_s"] for r in rows], "s--", label="p99")
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent clients")
    b.set_ylabel("latency (s)")
    b.legend()
    b.set_title("latency of answered requests")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="", help="policy endpoint /v1 URL (default: start eval.serve here)")
    ap.add_argument("--api-key-env", default="POLYAUDIO_API_KEY", help="environment variable holding the key (--url)")
    ap.add_argument("--model", default="polyaudio")
    ap.add_argument("--levels", default="1,4,16", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout-s", type=float, default=300.0, help="per-request client timeout")
    ap.add_argument("--config", default=None, help="YAML config of the served checkpoint and serve.* (no --url)")
    ap.add_argument("-o", "--override", action="append", default=[], help="dotted override, e.g. serve.max_ongoing_requests=4")
    ap.add_argument("--out", default="artifacts/bench/serve_load")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.levels.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    from polyaudio_rl.core.config import load_config
    from polyaudio_rl.core.openai_api import api_key_from_env

    cfg = load_config(a.config, a.override)
    started = not a.url
    if started:
        from dataclasses import replace

        from eval import serve as eval_serve
        from polyaudio_rl.core.model import resolve_path

        key = secrets.token_urlsafe(24)
        scfg = replace(cfg.serve, host="127.0.0.1", port=free_port())
        path = resolve_path(cfg.model)
        print(f"starting eval.serve on {path} (max_ongoing_requests={scfg.max_ongoing_requests}, "
              f"max_queued_requests={scfg.max_queued_requests}) ...", flush=True)
        url = eval_serve.start(scfg, path, path, num_cpus=cfg.ray_num_cpus or 6, api_key=key)
        serve_cfg = {k: getattr(scfg, k) for k in ("max_ongoing_requests", "max_queued_requests", "backpressure_status",
                                                    "retry_after_s", "ingress_replicas", "policy_replicas")}
    else:
        url, key, serve_cfg = a.url, api_key_from_env(a.api_key_env), {}
    rows: list[dict] = []
    try:
        asyncio.run(run_level(url, key, a.model, 1, 2, a.clips, a.max_tokens, a.timeout_s))  # warm-up
        for n in levels:
            row = asyncio.run(run_level(url, key, a.model, n, a.requests, a.clips, a.max_tokens, a.timeout_s))
            rows.append(row)
            print(f"N={n:>3}: {row['ok']}/{row['sent']} ok, {row['requests_per_s']:.2f} req/s, "
                  f"{row['tokens_per_s']:.1f} tok/s, p50 {row['p50_s'] or 0:.3f} s, p99 {row['p99_s'] or 0:.3f} s, "
                  f"refused {row['refused_429_503']}, 5xx {row['errors_5xx']}, other errors {row['errors_other']}",
                  flush=True)
    finally:
        if started:
            eval_serve.stop()
    meta = {"url": url if not started else "eval.serve (started here)", "model": a.model, "clips": a.clips,
            "max_tokens": a.max_tokens, "requests_per_client": a.requests, "serve": serve_cfg,
            "load_avg": os.getloadavg(), "cpus": os.cpu_count()}
    (out / "serve_load.json").write_text(json.dumps({"meta": meta, "levels": rows}, indent=1))
    plot(rows, out / "serve_load.png",
         f"{a.clips}-clip requests, {a.max_tokens} tokens, {a.requests} per client; {serve_cfg or url}")
    print(f"{'N':>4} {'ok':>6} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7} {'429/503':>7} {'5xx':>4} {'other':>5}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['ok']:>3}/{r['sent']:<3}{r['requests_per_s']:>6.2f} {r['tokens_per_s']:>7.1f} "
              f"{r['p50_s'] or 0:>7.3f} {r['p99_s'] or 0:>7.3f} {r['refused_429_503']:>7} {r['errors_5xx']:>4} "
              f"{r['errors_other']:>5}")
    print(f"-> {out}/serve_load.json, {out}/serve_load.png")
    return 0 if all(r["errors_5xx"] == 0 and r["errors_other"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
