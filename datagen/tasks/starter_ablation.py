"""The starter ablation curriculum: one set-of-clips task that gives each reward term something to act on.

"Which clips contain a beep?" over 3–4 clips of 1 s, of which 1 or 2 hold a 0.3 s 1 kHz beep (the rest are silent):
the starter counting task's audio, with the answer a *set* of clips (key ``{"type": "clips", "value": [1, 3]}``,
answer "Clips 1 and 3."). It is Table 2's temporal-grounding question form ("In which of the clips does the sound
of … occur?") without the timestamps, so it is stored under the task name ``temporal_grounding``.

What each reward term can act on (``python -m polyaudio_rl.ablate --suite starter``):

- clip-parsimony: the suite trains with a lenient correctness (``reward.clip_set_credit: recall``: credit for
  naming the beeping clips whatever else is named), so without parsimony naming extra clips costs nothing;
  ``relevant_clips`` is the beeping set, so parsimony is ``|named ∩ beeping| / |named|``.
- consistency: items come in *paraphrase families* of :data:`PARAPHRASES` — the same clips in the same order (the
  same audio bytes) asked in different words — recorded as ``metadata.family`` / ``metadata.paraphrase``. The
  prompt stream keeps a family's rows next to each other (:func:`polyaudio_rl.data_stream.epoch_order`), so with an
  even batch size a family shares a GRPO batch, and the consistency reward's cross-paraphrase term sees it.
- format: the suite asks for ``<answer>…</answer>`` (``data.answer_tag``), which the format reward checks.

Family layout: item ``index`` belongs to family :func:`paraphrase_family`, built so that all members have the same
clip count (``datagen.generate.n_clips_for`` cycles over the index); members share the family's seed, so their
clips are byte-identical. Selected by ``DatagenConfig.preset='starter_ablation'`` (or the curriculum of that
name); the starter curriculum of ``make demo`` is untouched.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from .base import ClipDraft, Draft
from .starter import BEEP_S, COUNT_CLIP_S, LICENCE, _tone

STARTER_ABLATION_TASKS = ("temporal_grounding",)
PARAPHRASES = 2
BEEP_HZ = 1000.0
# One wording per paraphrase member: the same question asked in clearly different words.
WORDINGS = (
    "Which clips contain a beep?",
    "A short beep sounds in some of these {n} recordings. Which recordings have one?",
)


def is_starter_ablation(cfg) -> bool:
    return (getattr(cfg, "curriculum", "paper") == "starter_ablation"
            or getattr(cfg, "preset", "") == "starter_ablation")


def paraphrase_family(cfg, task: str, index: int) -> tuple[int, int] | None:
    """(family index, member) of item ``index``, or None when the task is not asked in paraphrase families.

    With c = max_clips - min_clips + 1 clip counts, block = index // (c·K), member = (index % (c·K)) // c and
    family = block·c + index % c: every member of a family has index ≡ family (mod c), so the same clip count."""
    if not is_starter_ablation(cfg) or task not in STARTER_ABLATION_TASKS:
        return None
    c = cfg.max_clips - cfg.min_clips + 1
    block, within = divmod(index, c * PARAPHRASES)
    member, r = divmod(within, c)
    return block * c + r, member


def answer_text(clips: list[int]) -> str:
    """'Clip 2.' / 'Clips 1 and 3.' / 'Clips 1, 2 and 4.'"""
    if len(clips) == 1:
        return f"Clip {clips[0]}."
    return "Clips " + ", ".join(map(str, clips[:-1])) + f" and {clips[-1]}."


def answer_space(n: int) -> list[list[int]]:
    """The sets a guess could give: every set of 1 or 2 of the n clips (the chance level is 1 / its size)."""
    return [list(c) for k in (1, 2) for c in combinations(range(1, n + 1), k)]


def beep_clips(ctx, rng, n: int, paraphrase: int = 0) -> Draft:
    """n clips of 1 s; 1 or 2 of them (uniformly) hold one beep at a random onset, the others are silent. The key is
    the set of beeping clips; ``paraphrase`` picks the wording (the audio depends on ``rng`` only)."""
    sr = ctx.cfg.sample_rate
    k = int(rng.integers(1, 3))
    beeping = sorted(int(i) + 1 for i in rng.choice(n, size=k, replace=False))
    clips = []
    for i in range(1, n + 1):
        wav = np.zeros(int(COUNT_CLIP_S * sr), dtype=np.float32)
        meta = {"kind": "signal", "signal": "beeps", "seconds": COUNT_CLIP_S, "beeps": []}
        if i in beeping:
            onset = round(float(rng.uniform(0.05, COUNT_CLIP_S - BEEP_S - 0.05)), 3)
            beep = _tone(sr, BEEP_HZ, BEEP_S, 0.4)
            wav[int(onset * sr): int(onset * sr) + beep.size] = beep
            meta["beeps"].append({"start": onset, "end": round(onset + BEEP_S, 3)})
        clips.append(ClipDraft(wav, meta, f"beeps:{int(i in beeping)}:{meta['beeps'][0]['start'] if meta['beeps'] else 0}",
                               LICENCE))
    q = WORDINGS[paraphrase % len(WORDINGS)].format(n=n)
    return Draft(clips, q, answer_text(beeping), {"type": "clips", "value": beeping}, beeping,
                 extra={"variant": "beep_clips", "target": "beep", "wording": paraphrase % len(WORDINGS),
                        "answer_space": answer_space(n)})
