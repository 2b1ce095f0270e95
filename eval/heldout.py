"""Held-out evaluation of the current policy: greedy answers on the bench prompts, the metrics of
:mod:`eval.heldout_metrics`, and optionally the "does it listen" controls of :mod:`eval.listen`."""
from __future__ import annotations

from typing import Any, Sequence

from .heldout_metrics import METRICS, score_answers
from .listen import run_controls


def greedy(rollout_pool: Any, prompts: Sequence[Any], tag: str) -> tuple[list[str], list[int]]:
    """One greedy completion per prompt from the rollout pool: (texts, token counts)."""
    groups = rollout_pool.generate(list(prompts), [f"{tag}:{p.sample_id}" for p in prompts], 1, greedy=True)
    return [g.completions[0].text for g in groups], [len(g.completions[0].token_ids) for g in groups]


def evaluate(rollout_pool: Any, prompts: Sequence[Any], answer_tag: bool = False, controls: bool = False,
             seed: int = 0) -> dict[str, Any]:
    """{"accuracy", "n", "per_task", "irrelevant_clip_rate", "paraphrase_agreement", "paraphrase_kappa",
    "format_rate", "mean_length", "items"} (``items``: id, answer, rule score per prompt, what
    :func:`polyaudio_rl.samples.record_heldout` keeps)
    and, with ``controls``, {"controls": {"silence": {...}, "shuffle": {...}}}."""
    texts, lengths = greedy(rollout_pool, prompts, "eval")
    out = score_answers([p.sample for p in prompts], texts, lengths, answer_tag)
    out["items"] = [{"id": p.sample_id, "answer": t, "score": c} for p, t, c in zip(prompts, texts, out.pop("scores"))]
    if controls:
        out["controls"] = run_controls(lambda ps, name: greedy(rollout_pool, ps, f"eval-{name}")[0], prompts,
                                       answer_tag, seed)
    return out


def log_fields(res: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an :func:`evaluate` result as ``eval/<name>`` fields for metrics.jsonl (None left out)."""
    fields = {k: res.get(k) for k in METRICS}
    for name, c in (res.get("controls") or {}).items():
        fields[f"{name}_accuracy"] = c.get("accuracy")
    return {f"eval/{k}": float(v) for k, v in fields.items() if v is not None}


def control_line(res: dict[str, Any], chance: float | None = None) -> str | None:
    """'does it listen: silence 0.203 (chance 0.188), shuffled clips 0.781 (normal 0.797)', or None without controls."""
    c = res.get("controls")
    if not c:
        return None
    sil, shu = c.get("silence") or {}, c.get("shuffle") or {}
    ch = sil.get("chance", chance)

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    return (f"does it listen: all clips silent {f(sil.get('accuracy'))} (chance {f(ch)}), clips shuffled "
            f"{f(shu.get('accuracy'))} on {shu.get('n', 0)} items (normal {f(res.get('accuracy'))})")
