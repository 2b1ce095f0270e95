""""Does it listen?" controls for held-out evaluation (multi-audio models are known to answer from the text alone).

Two altered copies of the held-out prompts, answered greedily like the normal evaluation and rule-verified:

silence  every clip replaced by silence of the same length; the key is unchanged. A policy that listens falls to
         about the chance level (the uniform guess over each item's answer space, reported beside it); one that
         answers from the question keeps its accuracy.
shuffle  the clips of each item put in another order (a seeded permutation that is never the identity) and the key
         remapped to the new positions (a clip index, a set or order of clips, an interval's clip, a value's clips,
         ``relevant_clips``). A policy that listens keeps its accuracy; one that learnt a position prior falls.
         Items whose question names clips by number ("Audio 1 and Audio 3 …") are left out of this control: the
         question would have to be rewritten.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from polyaudio_rl.core.prompts import MultiAudioPrompt
from polyaudio_rl.core.schema import Sample


def silence_prompt(prompt: MultiAudioPrompt) -> MultiAudioPrompt:
    """The prompt with every clip replaced by zeros of the same length (text and sample unchanged)."""
    return dataclasses.replace(prompt, audios=[np.zeros_like(a) for a in prompt.audios])


def remap_key(key: dict[str, Any], new_pos: dict[int, int]) -> dict[str, Any]:
    """``key`` with clip indices moved: ``new_pos[old] = new`` (1-based). Keys without clip indices are unchanged."""
    t, out = key.get("type"), dict(key)
    if t == "clip":
        out["value"] = new_pos[int(key["value"])]
    elif t == "clips":
        out["value"] = sorted(new_pos[int(v)] for v in key["value"])
    elif t == "permutation":
        out["value"] = [new_pos[int(v)] for v in key["value"]]
    elif t == "interval":
        out["clip"] = new_pos[int(key["clip"])]
    if key.get("clips") and t == "value":
        out["clips"] = sorted(new_pos[int(v)] for v in key["clips"])
    return out


def non_identity_order(n: int, rng: np.random.Generator) -> list[int]:
    """A random order of 0..n-1 that is not the identity (n >= 2): ``order[new] = old``."""
    if n < 2:
        raise ValueError(f"shuffling needs at least 2 clips, got {n}")
    while True:
        order = [int(i) for i in rng.permutation(n)]
        if order != list(range(n)):
            return order


def shuffle_prompt(prompt: MultiAudioPrompt, order: Sequence[int]) -> MultiAudioPrompt:
    """The prompt with clip ``order[j]`` (0-based) at position j, its sample's clips and key remapped to match."""
    s = prompt.sample
    if s is None:
        raise ValueError(f"shuffle control: prompt {prompt.sample_id} carries no sample (no key to remap)")
    new_pos = {old + 1: new + 1 for new, old in enumerate(order)}
    sample = dataclasses.replace(
        s, clips=[s.clips[i] for i in order], key=remap_key(s.key, new_pos),
        relevant_clips=sorted(new_pos[int(i)] for i in s.relevant_clips))
    return dataclasses.replace(prompt, audios=[prompt.audios[i] for i in order], sample=sample)


def names_clips(sample: Sample) -> bool:
    """Whether the question names particular clips ("Audio 1", "the third clip"); "all clips" / "every recording"
    name the whole set, which a shuffle leaves as it is."""
    from rewards.cliprefs import find_clip_mentions

    n = len(sample.clips)
    return any(set(m.indices) != set(range(1, n + 1)) for m in find_clip_mentions(sample.question, n))


def control_prompts(prompts: Sequence[MultiAudioPrompt], seed: int = 0) -> dict[str, list[MultiAudioPrompt]]:
    """{"silence": every prompt silenced, "shuffle": the prompts whose question names no clip, shuffled}."""
    rng = np.random.default_rng(seed)
    shuffled = [shuffle_prompt(p, non_identity_order(p.num_clips, rng)) for p in prompts
                if p.sample is not None and p.num_clips >= 2 and not names_clips(p.sample)]
    return {"silence": [silence_prompt(p) for p in prompts], "shuffle": shuffled}


def run_controls(answer: Any, prompts: Sequence[MultiAudioPrompt], answer_tag: bool = False,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Held-out accuracy under each control. ``answer(prompts, tag) -> texts`` answers greedily (the rollout pool);
    each control also reports its item count, and silence the chance level of its items."""
    from rewards.verifiers import verify

    from .heldout_metrics import chance_level

    out: dict[str, dict[str, Any]] = {}
    for name, ps in control_prompts(prompts, seed).items():
        texts = answer(ps, name) if ps else []
        scores = [float(verify(p.sample, t, answer_tag=answer_tag).score or 0.0) for p, t in zip(ps, texts)]
        out[name] = {"accuracy": float(np.mean(scores)) if scores else None, "n": len(ps)}
        if name == "silence":
            out[name]["chance"] = chance_level([p.sample for p in ps])
    return out
