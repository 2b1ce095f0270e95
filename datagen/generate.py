"""One item: seed -> task generator -> encoded clips -> validated Sample (or a counted reject reason)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import SR, SourceError, encode, quantize
from polyaudio_rl.core.schema import Clip, Sample, SampleError
from .sources.speech import stable_hash
from .tasks import get_task
from .tasks.base import GENERATOR_VERSION, Context, Draft, tidy_question
from .tasks.starter_ablation import paraphrase_family


def n_clips_for(index: int, lo: int, hi: int) -> int:
    """Clip counts cycle lo..hi, so every task's counts are balanced (250 bench items: 63/63/62/62)."""
    return lo + index % (hi - lo + 1)


def item_seed(seed: int, split: str, task: str, index: int, attempt: int) -> int:
    return stable_hash("item", seed, split, task, index, attempt) % (1 << 63)


@dataclass
class ItemResult:
    task: str
    index: int
    sample: Sample | None = None
    reason: str | None = None           # reject reason when sample is None
    detail: str = ""
    retries: list[str] = field(default_factory=list)  # reasons of failed attempts before success


def draft_to_sample(ctx: Context, task: str, index: int, seed: int, attempt: int, draft: Draft) -> Sample:
    clips, metas = [], []
    for i, c in enumerate(draft.clips, 1):
        wav = np.asarray(c.wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0 or not np.isfinite(wav).all():
            raise SampleError(f"{task}#{index}: clips[{i}] audio is empty or not finite")
        wav = quantize(wav)
        clips.append(Clip(encode(wav, SR, ctx.cfg.audio_format), SR, round(wav.size / SR, 6), c.source_id, c.licence))
        metas.append(c.meta)
    speakers = sorted({m["speaker"] for m in metas if m.get("speaker")})
    events = [{"clip": i, **e} for i, m in enumerate(metas, 1) for e in m.get("events", [])]
    meta = {"generator": f"{GENERATOR_VERSION}/{task}", "seed": ctx.cfg.seed, "item_seed": seed, "attempt": attempt,
            "n_clips": len(clips), "clips": metas, "speakers": speakers, "events": events, **draft.extra}
    s = Sample(id=f"{ctx.split}-{task}-{index:06d}", task=task, split=ctx.split, clips=clips,
               question=tidy_question(draft.question), answer=draft.answer, key=draft.key, relevant_clips=list(draft.relevant),
               choices=list(draft.choices), metadata=meta)
    s.validate(max_clips=ctx.cfg.max_clips, max_clip_seconds=ctx.cfg.max_clip_seconds)
    if len(s.clips) != n_clips_for(index, ctx.cfg.min_clips, ctx.cfg.max_clips):
        raise SampleError(f"sample {s.id}: generator returned {len(s.clips)} clips")
    return s


def make_item(ctx: Context, task: str, index: int) -> ItemResult:
    """Try up to cfg.max_attempts sub-seeds; a source failure or invalid draft is retried, then counted. A task asked
    in paraphrase families draws its content from the family's seed (the members' clips are identical) and its
    wording from the member number; ``metadata.family`` / ``metadata.paraphrase`` record both."""
    fn = get_task(task)
    n = n_clips_for(index, ctx.cfg.min_clips, ctx.cfg.max_clips)
    fam = paraphrase_family(ctx.cfg, task, index)
    res = ItemResult(task, index)
    for attempt in range(ctx.cfg.max_attempts):
        seed = item_seed(ctx.cfg.seed, ctx.split, task, index if fam is None else fam[0], attempt)
        try:
            rng = np.random.default_rng(seed)
            draft = fn(ctx, rng, n) if fam is None else fn(ctx, rng, n, paraphrase=fam[1])
            if fam is not None:
                draft.extra.update(family=f"{ctx.split}-{task}-family-{fam[0]:06d}", paraphrase=fam[1])
            res.sample = draft_to_sample(ctx, task, index, seed, attempt, draft)
            res.reason = None
            return res
        except SourceError as exc:
            res.reason, res.detail = exc.reason, str(exc)
        except SampleError as exc:
            res.reason, res.detail = "invalid sample", str(exc)
        except ValueError as exc:  # a generator could not satisfy its constraints with this seed
            res.reason, res.detail = "generator constraint", f"{task}: {exc}"
        res.retries.append(res.reason)
    return res
