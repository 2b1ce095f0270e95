"""The voxtral family on its tiny offline checkpoint: the prompt is mistral_common's own encoding (2–5 clips, clip
order, 375 tokens a clip), the tekken tokenizer's special ids, the Mistral-format weights (names and rotary layout),
LoRA targets, the merged adapter's serving files. Voxtral in vLLM (greedy tokens equal to transformers', merged and
adapter syncs verified by the probe, audio tokens never sampled) is tests/actors/test_family_engines.py[voxtral]."""
from __future__ import annotations

import json

import pytest
import torch

from polyaudio_rl.core.models import family_of, get_family
from polyaudio_rl.core.models.voxtral import TekkenTokenizer, audio_token_count
from polyaudio_rl.core.models.voxtral_format import mistral_name, to_mistral_weights
from polyaudio_rl.core.prompts import build_messages
from tests.conftest import tone

Q = "Which clip has the higher pitch?\nOptions:\n(A) Audio 1\n(B) Audio 2"


@pytest.fixture(scope="module")
def vox(tiny_ckpt_of):
    path = tiny_ckpt_of("voxtral")
    fam = get_family("voxtral")
    return fam, path, fam.load_processor(path)


def _mistral_common_ids(path, clips, question):
    """What mistral_common's own chat encoder (vLLM's chat endpoint) gives for a user turn of audio chunks and text."""
    from mistral_common.protocol.instruct.chunk import AudioChunk, TextChunk
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.audio import Audio
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    chunks = [AudioChunk.from_audio(Audio(audio_array=a, sampling_rate=16000, format="wav")) for a in clips]
    tok = MistralTokenizer.from_file(f"{path}/tekken.json")
    request = ChatCompletionRequest(messages=[UserMessage(content=[*chunks, TextChunk(text=question)])])
    return tok.encode_chat_completion(request).tokens


@pytest.mark.parametrize("n_clips", [2, 3, 4, 5])
@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_prompt_is_mistral_commons_encoding(vox, n_clips, system):
    fam, path, proc = vox
    clips = [tone(0.5 + 0.5 * i, 200.0 * (i + 1)) for i in range(n_clips)]
    text = proc.apply_chat_template(build_messages(Q, n_clips, system))  # a system prompt is left out (v7)
    assert text == "<s>[INST]" + "[BEGIN_AUDIO][AUDIO]" * n_clips + Q + "[/INST]"
    batch = proc(text=[text], audio=clips, return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    assert ids == _mistral_common_ids(path, clips, Q)
    assert ids[:2] == [1, 3] and ids[-1] == 4
    assert len(ids) == len(proc.tokenizer(text)["input_ids"]) - n_clips + 375 * n_clips
    assert fam.vllm_input(build_prompt_of(text, clips), proc.tokenizer)["prompt_token_ids"] == ids
    assert batch["input_features"].shape == (n_clips, 128, 3000)
    # the real-audio frames per clip, in clip order (hop 160)
    assert batch["feature_attention_mask"].sum(-1).tolist() == [int(len(c) / 160) for c in clips]


def build_prompt_of(text, clips):
    from polyaudio_rl.core.prompts import MultiAudioPrompt

    return MultiAudioPrompt("s", text, clips)


def test_spans_in_clip_order(vox):
    _, _, proc = vox
    clips = [tone(1.0), tone(0.5), tone(2.0)]
    batch = proc(text=[proc.apply_chat_template(build_messages(Q, 3))], audio=clips, return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    starts = [i for i, t in enumerate(ids) if t == 25]  # [BEGIN_AUDIO]
    assert starts == [2, 2 + 376, 2 + 2 * 376]
    for s in starts:
        assert ids[s + 1: s + 376] == [24] * 375 and ids[s + 376] != 24
    # clip k's features are row k
    assert batch["feature_attention_mask"].sum(-1).tolist() == [100, 50, 200]


@pytest.mark.parametrize("seconds, tokens", [(0.1, 375), (1.0, 375), (12.3, 375), (30.0, 375), (30.01, 750),
                                             (60.0, 750), (61.0, 1125)])
def test_audio_token_count(seconds, tokens):
    assert audio_token_count(int(round(seconds * 16000))) == tokens


def test_sft_target_ends_the_turn_with_eos(vox):
    from types import SimpleNamespace

    from polyaudio_rl.sft import sft_target_ids

    _, _, proc = vox
    ids = sft_target_ids(SimpleNamespace(id="s", answer="Audio 2"), proc)
    assert ids[-1] == 2 and proc.tokenizer.decode(ids[:-1]) == "Audio 2"


def test_clip_over_30_s_is_an_error(vox):
    _, _, proc = vox
    with pytest.raises(ValueError, match="clip 2 is 31.00 s"):
        proc(text=["x"], audio=[tone(1.0), tone(31.0)])


def test_special_tokens_and_tokenizer(vox):
    fam, path, proc = vox
    tok = proc.tokenizer
    assert isinstance(tok, TekkenTokenizer)
    assert fam.special_ids(tok) == [24, 25, 34]
    assert tok.convert_tokens_to_ids(["[AUDIO]", "[BEGIN_AUDIO]", "</s>", "<pad>"]) == [24, 25, 2, 11]
    assert tok.encode("<s>[INST]hi[/INST]")[:2] == [1, 3] and tok.encode("<s>[INST]hi[/INST]")[-1] == 4
    text = "The second clip, Audio 2."
    assert tok.decode(tok.encode(text)) == text
    tok.padding_side = "left"
    enc = tok(["a b c", "a"], padding=True, return_tensors="pt")
    assert enc["input_ids"][1, 0] == 11 and enc["attention_mask"][1].tolist()[-1] == 1
    tekken = json.loads((family_of(path) and __import__("pathlib").Path(path) / "tekken.json").read_text())
    assert tekken["config"]["version"] == "v7" and tekken["audio"]["chunk_length_s"] == 30.0


def test_mistral_names_and_rotary_layout():
    assert mistral_name("language_model.model.layers.3.self_attn.q_proj.weight") == "layers.3.attention.wq.weight"
    assert mistral_name("language_model.model.layers.0.mlp.up_proj.weight") == "layers.0.feed_forward.w3.weight"
    assert mistral_name("language_model.lm_head.weight") == "output.weight"
    assert mistral_name("audio_tower.layers.1.fc2.bias") == \
        "mm_whisper_embeddings.whisper_encoder.transformer.layers.1.feed_forward.w2.bias"
    assert mistral_name("multi_modal_projector.linear_2.weight") == \
        "mm_whisper_embeddings.audio_language_projection.2.weight"
    assert mistral_name("audio_tower.embed_positions.weight") is None
    with pytest.raises(KeyError, match="no Mistral-format name"):
        mistral_name("vision_tower.x")
    # one head of 4 rows (head_dim 4): HF keeps the rotary halves [r0 r1 | r2 r3], Mistral interleaves pairs
    # (r0, r2), (r1, r3); vLLM's loader maps it back with view(n, hd/2, 2, in).transpose(1, 2)
    w = torch.arange(8.0).reshape(4, 2)
    out = to_mistral_weights({"language_model.model.layers.0.self_attn.k_proj.weight": w}, 1, 1)
    m = out["layers.0.attention.wk.weight"]
    assert m.tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]
    assert torch.equal(m.view(1, 2, 2, 2).transpose(1, 2).reshape(4, 2), w)


def test_tiny_checkpoint_has_both_formats(vox):
    import safetensors.torch as st

    fam, path, _ = vox
    from pathlib import Path

    p = Path(path)
    params = json.loads((p / "params.json").read_text())
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    assert params["head_dim"] == 64 and enc["dim"] * 4 == enc["hidden_dim"]
    hf, mi = st.load_file(str(p / "model.safetensors")), st.load_file(str(p / "consolidated.safetensors"))
    assert len(mi) == len(hf) - 1  # all but the sinusoid positions (vLLM computes them)
    from transformers.models.whisper.modeling_whisper import sinusoids

    pos = hf["audio_tower.embed_positions.weight"]
    assert torch.equal(pos, sinusoids(*pos.shape))
    assert fam.vllm_engine_kwargs()["tokenizer_mode"] == "mistral"


def test_lora_targets_are_decoder_projections(vox):
    import re

    fam, path, _ = vox
    model = fam.load_model(path, torch.float32)
    names = [n for n, _ in model.named_modules()]
    hit = [n for n in names if re.fullmatch(fam.lora_target_modules, n)]
    assert len(hit) == 7 * 2 and all(n.startswith("model.language_model.layers.") for n in hit)
    assert not [n for n in names if "audio_tower" in n and re.fullmatch(fam.lora_target_modules, n)]


def test_merged_adapter_checkpoint_has_the_mistral_files(vox, tmp_path):
    """eval.merge writes the merged weights in both formats (vLLM's Voxtral serves from the Mistral ones)."""
    import safetensors.torch as st
    from peft import LoraConfig, get_peft_model

    from eval.merge import merge_adapter

    fam, path, _ = vox
    peft = get_peft_model(fam.load_model(path, torch.float32), LoraConfig(r=4, lora_alpha=8,
                                                                          target_modules=fam.lora_target_modules))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    peft.save_pretrained(str(tmp_path / "adapter"))
    out = merge_adapter(path, str(tmp_path / "adapter"), dtype="float32")
    hf = st.load_file(f"{out}/model.safetensors")
    mi = st.load_file(f"{out}/consolidated.safetensors")
    base = st.load_file(f"{path}/consolidated.safetensors")
    assert (tmp_path / "adapter.merged" / "params.json").is_file() and (tmp_path / "adapter.merged" / "tekken.json").is_file()
    assert torch.equal(mi["layers.1.feed_forward.w2.weight"], hf["language_model.model.layers.1.mlp.down_proj.weight"])
    assert not torch.equal(mi["layers.1.attention.wq.weight"], base["layers.1.attention.wq.weight"])
    assert torch.equal(mi["output.weight"], base["output.weight"])  # not adapted
