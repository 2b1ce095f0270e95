"""Every model family on its tiny checkpoint: recognition, the multi-audio prompt (one placeholder span per clip, in
clip order, 2–5 clips), the special tokens sampling must never produce, the audio-token rate, LoRA targets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polyaudio_rl.core.models import FamilyError, family_for_config, family_names, family_of, get_family
from polyaudio_rl.core.prompts import build_prompt, processor_inputs
from tests.conftest import make_sample

FAMILIES = family_names()

# hand-computed audio positions per clip: mel frames n/160 → stride-2 conv (f-1)//2+1 → pool 2 (c-2)//2+1
TOKENS = {
    "qwen2_audio": [(1.0, 25), (1.5, 37), (2.0, 50), (30.0, 750)],
    "qwen2_5_omni": [(1.0, 25), (1.5, 37), (2.0, 50), (30.0, 750)],
    "voxtral": [(1.0, 375), (1.5, 375), (2.0, 375), (30.0, 375)],  # every clip padded to one 30 s window
}
# whether a special token closes each audio span (Voxtral's spans are followed by text: "\nAudio 2: …")
CLOSED_SPANS = {"qwen2_audio": True, "qwen2_5_omni": True, "voxtral": False}


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tiny_ckpt_of):
    from polyaudio_rl.core.model import load_processor

    path = tiny_ckpt_of(request.param)
    return get_family(request.param), path, load_processor(path)


def test_the_family_is_read_from_the_checkpoint(fam):
    family, path, _ = fam
    assert family_of(path) is family


def test_an_unsupported_architecture_lists_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(FamilyError) as err:
        family_of(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "LlamaForCausalLM" in msg and all(n in msg for n in FAMILIES)
    with pytest.raises(FamilyError, match="no config.json"):
        family_of(tmp_path / "missing")
    with pytest.raises(FamilyError, match="unknown model family 'gpt'"):
        get_family("gpt")


@pytest.mark.parametrize("name", FAMILIES)
def test_audio_token_rate(name):
    family = get_family(name)
    for seconds, n in TOKENS[name]:
        assert family.audio_token_count(int(seconds * 16000)) == n
        # the per-second rate, or (a family padding every clip to its window) that window's count
        assert min(abs(n - family.audio_tokens_per_second * s) for s in (seconds, family.max_clip_seconds)) <= 1


@pytest.mark.parametrize("n_clips", [2, 3, 4, 5])
def test_one_placeholder_span_per_clip_in_clip_order(fam, n_clips):
    family, _, proc = fam
    durations = [0.5 + 0.25 * i for i in range(n_clips)][::-1]  # distinct lengths, so the order shows
    p = build_prompt(make_sample(f"s{n_clips}", durations), proc)
    assert p.text.count(family.audio_placeholder) == n_clips
    ids = processor_inputs([p], proc)["input_ids"][0]
    audio_id = proc.tokenizer.convert_tokens_to_ids(family.audio_placeholder)
    is_audio = (ids == audio_id).int()
    starts = ((is_audio[1:] - is_audio[:-1]) == 1).nonzero().flatten() + 1
    ends = ((is_audio[1:] - is_audio[:-1]) == -1).nonzero().flatten() + 1
    spans = [int(e - s) for s, e in zip(starts, ends)]
    assert spans == [family.audio_token_count(len(a)) for a in p.audios]
    special = set(family.special_ids(proc.tokenizer))
    before = [int(ids[s - 1]) for s in starts]
    after = [int(ids[e]) for e in ends]
    # each span opens with the family's audio begin token (and closes with its end token where it has one)
    assert all(t in special for t in before + (after if CLOSED_SPANS[family.name] else []))
    assert not any(t == audio_id for t in after)


def test_special_tokens_are_single_tokens_of_the_tokenizer(fam):
    family, _, proc = fam
    tok = proc.tokenizer
    ids = family.special_ids(tok)
    assert len(ids) == len(family.audio_special_tokens)
    assert tok.convert_tokens_to_ids(family.audio_placeholder) in ids
    for t in family.audio_special_tokens:
        assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)]


def test_lora_targets_the_language_model_only(fam):
    from polyaudio_rl.core.config import LoraConfig
    from polyaudio_rl.core.model import add_lora, load_model
    from polyaudio_rl.core.models import parts_of

    family, path, _ = fam
    peft = add_lora(load_model(path), LoraConfig())
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft.named_parameters() if ".lora_A." in n}
    parts = parts_of(peft)
    audio = {id(m) for a in parts.audio_modules for m in a.modules()}
    named = dict(peft.named_modules())
    assert lora_modules and not any(id(named[n]) in audio for n in lora_modules)
    lm = {id(m) for m in parts.language_model.modules()}
    assert all(id(named[n]) in lm for n in lora_modules)
    n_layers = len([m for m in parts.language_model.modules() if type(m).__name__.endswith("DecoderLayer")])
    kinds = sorted({n.rsplit(".", 1)[-1] for n in lora_modules})
    assert kinds == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert len(lora_modules) == 7 * n_layers
    assert not [n for n, p in peft.named_parameters() if p.requires_grad and "lora_" not in n]


def test_the_tiny_model_hears_its_clips(fam):
    """The audio embeddings the language model receives move with the clips: tones vs the same clips silent differ by
    at least a fifth of their norm at the audio positions (the tiny Qwen2-Audio ~0.5; a tiny encoder whose
    convolutions are drowned by its sinusoid positions ~0.06, and no demo learns on it)."""
    from polyaudio_rl.core.model import load_model
    from polyaudio_rl.core.models import parts_of
    from polyaudio_rl.core.prompts import MultiAudioPrompt

    family, path, proc = fam
    model = load_model(path)
    seen = []
    hook = parts_of(model).language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    p = build_prompt(make_sample("hear", (1.0, 1.5)), proc, system_prompt=None)
    silent = MultiAudioPrompt(p.sample_id, p.text, [np.zeros_like(a) for a in p.audios], p.sample)
    batches = [processor_inputs([q], proc) for q in (p, silent)]
    with torch.no_grad():
        for b in batches:
            model(**b)
    hook.remove()
    audio = batches[0]["input_ids"] == proc.tokenizer.convert_tokens_to_ids(family.audio_placeholder)
    heard, quiet = seen[0][audio], seen[1][audio]
    assert ((heard - quiet).norm(dim=-1) / heard.norm(dim=-1)).mean() > 0.2


SR = 16000


def _tone(hz: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _beep(rng) -> np.ndarray:
    wav = np.zeros(SR, np.float32)
    at = int(rng.uniform(0.05, 0.65) * SR)
    wav[at: at + int(0.3 * SR)] = _tone(1000.0, 0.3, 0.4)
    return wav


# the starter curriculum's audio cues (datagen/tasks/starter.py): one clip of each kind, 1 s, per draw
CUES = {
    "noise_vs_tone": lambda r: ((0.2 * r.standard_normal(SR)).astype(np.float32), _tone(r.uniform(200, 1000))),
    "high_vs_low_tone": lambda r: (_tone(r.uniform(2000, 4000)), _tone(r.uniform(200, 500))),
    "beep_vs_silence": lambda r: (_beep(r), np.zeros(SR, np.float32)),
}


def cue_fisher(path: str) -> dict[str, float]:
    """How well a checkpoint's audio embeddings (the language model's input, position by position) tell the two kinds
    of clip of each :data:`CUES` apart: |mean_a - mean_b|² / (var_a + var_b), summed over dimensions, over the audio
    positions of 8 three-clip prompts (1 s clips, kinds a, b and a or b)."""
    from polyaudio_rl.core.model import load_model, load_processor
    from polyaudio_rl.core.models import parts_of
    from polyaudio_rl.core.prompts import MultiAudioPrompt

    family, proc, model = family_of(path), load_processor(path), load_model(path)
    audio_id = proc.tokenizer.convert_tokens_to_ids(family.audio_placeholder)
    p = build_prompt(make_sample("cue", (1.0, 1.0, 1.0)), proc, system_prompt=None)
    seen = []
    hook = parts_of(model).language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"][0]), with_kwargs=True)
    out = {}
    for name, draw in CUES.items():
        kinds = {True: [], False: []}
        for i in range(8):
            rng = np.random.default_rng(i)
            a, b = draw(rng)
            a2, b2 = draw(rng)
            batch = processor_inputs([MultiAudioPrompt(p.sample_id, p.text, [a, b, a2 if i % 2 else b2], p.sample)], proc)
            with torch.no_grad():
                model(**batch)
            pos = (batch["input_ids"][0] == audio_id).nonzero().flatten()
            for k, span in enumerate(pos.tensor_split(3)):  # three equal spans, in clip order
                kinds[k == 0 or (k == 2 and i % 2 == 1)].append(seen[-1][span])
        x, y = torch.cat(kinds[True]), torch.cat(kinds[False])
        out[name] = float((x.mean(0) - y.mean(0)).pow(2).sum() / (x.var(0).sum() + y.var(0).sum()))
    hook.remove()
    return out


def test_the_tiny_qwen2_5_omni_hears_the_demo_cues_token_by_token(tiny_ckpt_of):
    """The demo's odd_one_out and entailment need each audio position to say noise or tone, high or low. The tiny
    Qwen2.5-Omni's encoder adds fixed sinusoid positions after its convolutions; drawn at std 0.08 the convolutions'
    content was outweighed by positions that differ from one token to the next (noise vs tone 1.1, high vs low 0.4,
    against the tiny Qwen2-Audio's 4.2 and 0.8), and the demo learned odd_one_out on some seeds only. At 0.12:
    2.6 / 1.2, and counting's beep-or-silence cue no weaker than at 0.08 (0.49; at 0.2 it fell to 0.33). Voxtral
    is not held to this (docs/models.md)."""
    omni, qwen = (cue_fisher(tiny_ckpt_of(f)) for f in ("qwen2_5_omni", "qwen2_audio"))
    assert omni["noise_vs_tone"] > 0.5 * qwen["noise_vs_tone"], (omni, qwen)
    assert omni["high_vs_low_tone"] > 0.8 * qwen["high_vs_low_tone"], (omni, qwen)
    assert omni["beep_vs_silence"] > 0.4 * qwen["beep_vs_silence"], (omni, qwen)


def test_list_families_and_the_cli(tmp_path, capsys):
    from polyaudio_rl.core.tiny import main

    main(["--list-families"])
    assert capsys.readouterr().out.split() == FAMILIES
    with pytest.raises(SystemExit):
        main(["--family", "nope", "--out", str(tmp_path / "x")])
    assert "unknown family 'nope'" in capsys.readouterr().err


def test_recognition_by_config_fields():
    for name in FAMILIES:
        f = get_family(name)
        assert family_for_config({"model_type": f.model_types[0]}) is f
        assert family_for_config({"architectures": [f.architectures[0]]}) is f


@pytest.mark.parametrize("config, name", [("qwen2_audio_7b_8xa100.yaml", "qwen2_audio"),
                                          ("qwen2_5_omni_7b_8xa100.yaml", "qwen2_5_omni"),
                                          ("qwen2_5_omni_3b_8xa100.yaml", "qwen2_5_omni"),
                                          ("voxtral_mini_3b_8xa100.yaml", "voxtral")])
def test_production_configs_fit_the_longest_prompt(config, name):
    """8 GPUs (4 rollout + 4 learners), and max_model_len holds max_clips clips of the longest length at the family's
    audio-token rate, ~300 text tokens and the answer."""
    from pathlib import Path

    from polyaudio_rl.core.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[4] / "configs" / config)
    family = get_family(name)
    assert cfg.rollout.num_actors * max(cfg.rollout.gpus_per_actor, 1) + cfg.learner.num_workers == 8
    longest = cfg.data.max_clips * family.audio_token_count(int(family.max_clip_seconds * 16000))
    assert cfg.data.max_clips <= family.max_clips
    assert longest + 300 + cfg.rollout.max_new_tokens <= cfg.rollout.max_model_len
