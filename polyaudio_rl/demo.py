"""The run report: ``RUN_DIR/report.md`` with the held-out tables, the reward curves, a per-task before/after bar
chart, and the commands to serve the trained adapter again (``eval.serve``) and to query it with ``openai``; then the
run's web page ``RUN_DIR/report.html`` and its wandb tables (:mod:`polyaudio_rl.report`, ``logging.html_report``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def per_task_chart(summary: dict[str, Any], path: Path) -> Path | None:
    """Held-out accuracy per task after SFT and after GRPO (bars), chance per task as a line."""
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if not after:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted(after["per_task"])
    x = np.arange(len(tasks) + 1)
    labels = ["all", *tasks]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    w = 0.38
    if before:
        ax.bar(x - w / 2, [before["accuracy"], *[before["per_task"].get(t, 0.0) for t in tasks]], w,
               label="after SFT", color="#9bb7d4")
    ax.bar(x + w / 2, [after["accuracy"], *[after["per_task"][t] for t in tasks]], w, label="after GRPO",
           color="#2b6cb0")
    if summary.get("chance") is not None:
        ax.axhline(summary["chance"], color="gray", ls="--", lw=1, label=f"chance {summary['chance']:.2f}")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, cfg: Any, summary: dict[str, Any], table_lines: list[str],
                 bench_lines: list[str] = ()) -> Path:
    run_dir = Path(run_dir)
    chart = per_task_chart(summary, run_dir / "per_task_accuracy.png")
    ckpts = sorted((run_dir / "grpo" / "checkpoints").glob("step-*"))
    adapter = str(ckpts[-1]) if ckpts else "RUN_DIR/grpo/checkpoints/step-N"
    model = cfg.model.path
    lines = [f"# PolyAudio-RL run report: {run_dir.name}", "",
             f"Config: data preset `{cfg.data.preset}`, model `{model}`, SFT {cfg.sft.epochs} epoch(s), GRPO "
             f"{cfg.grpo.steps} steps × {cfg.grpo.prompts_per_step} prompts × G={cfg.grpo.group_size}, seed {cfg.seed}.",
             "", "Listen to the held-out items and the rollouts kept during GRPO: [report.html](report.html) (open it in "
             "a browser, in this directory).", "",
             "## Held-out accuracy (rule verifiers, greedy)", "", "```", *table_lines, "```", ""]
    if chart:
        lines += [f"![per-task accuracy]({chart.name})", ""]
    if (run_dir / "reward_curves.png").exists():
        lines += ["## Reward curves", "", "![reward curves](reward_curves.png)", ""]
    bench = summary.get("bench")
    if bench and bench_lines:
        lines += ["## PolyAudio-Bench against the served adapter", "",
                  f"`eval.bench` sent the bench split over HTTP to `eval.serve` at {bench['url']} (Ray Serve, "
                  "OpenAI-compatible; the adapter merged into the base checkpoint). Full report: "
                  "[bench/report.md](bench/report.md).", "", "```", *bench_lines, "```", "",
                  "![bench per task](bench/chart.png)", ""]
    lines += [
        "## Serve the trained adapter again", "",
        "```bash",
        f"python -m eval.serve --policy {model} --adapter {adapter} --judge {model}   # judge: the tiny checkpoint",
        "```", "",
        "## Query it with the openai client", "",
        "```python",
        "import base64, io, numpy as np, soundfile as sf",
        "from openai import OpenAI",
        "",
        "def wav(x):",
        "    b = io.BytesIO(); sf.write(b, x, 16000, format='WAV'); return base64.b64encode(b.getvalue()).decode()",
        "",
        "t = np.arange(16000) / 16000",
        "clips = [0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.random.randn(16000), 0.3 * np.sin(2 * np.pi * 660 * t)]",
        "content = []",
        "for i, c in enumerate(clips, 1):",
        "    content += [{'type': 'text', 'text': f'Audio {i}: '},",
        "                {'type': 'input_audio', 'input_audio': {'data': wav(c.astype('float32')), 'format': 'wav'}}]",
        "content.append({'type': 'text', 'text': 'Which clip is noise rather than a steady tone?'})",
        "client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')",
        "model = client.models.list().data[0].id",
        "r = client.chat.completions.create(model=model, messages=[{'role': 'user', 'content': content}], max_tokens=8)",
        "print(r.choices[0].message.content)",
        "```", "",
        f"Files: `summary.json`, `metrics.jsonl`, `reward_curves.png`, `per_task_accuracy.png`, `sft/`, `grpo/`, `logs/`.",
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    write_page(run_dir, cfg)
    return out


def write_page(run_dir: Path, cfg: Any) -> Path | None:
    """``RUN_DIR/report.html`` (after report.md and the pictures it shows), and the same tables in wandb."""
    logging_cfg = getattr(cfg, "logging", None)
    if logging_cfg is None or not logging_cfg.html_report:
        return None
    from .report import build, wandb_tables

    page = build(run_dir)
    if getattr(cfg, "wandb_mode", "disabled") != "disabled":
        try:
            wandb_tables(run_dir, cfg.wandb_mode)
        except Exception as exc:  # noqa: BLE001 - wandb is optional: the page and report.md stand without it
            print(f"[report] wandb tables not logged: {type(exc).__name__}: {exc}", file=sys.stderr)
    return page
