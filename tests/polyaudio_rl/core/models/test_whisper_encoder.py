"""The length-aware audio encoder: the stock padded-window encoder's embeddings, each clip on its own positions."""
import numpy as np
import pytest
import torch
from transformers import Qwen2AudioForConditionalGeneration

from polyaudio_rl.core.models.whisper_encoder import (
    _encode, key_lengths, length_aware_fbank, length_aware_forward, use_length_aware_encoder, use_length_aware_features,
)
from polyaudio_rl.core.model import load_model, load_processor

# clip lengths in seconds: shorter than one pooled position, odd and even frame counts, one frame short of the
# window, the whole window
SECONDS = (0.03, 1.0, 2.37, 7.11, 29.99, 30.0)


@pytest.fixture(scope="module")
def tower(tiny_ckpt):
    return Qwen2AudioForConditionalGeneration.from_pretrained(tiny_ckpt).eval().model.audio_tower


@pytest.fixture(scope="module")
def features(tiny_processor):
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in SECONDS]
    fe = tiny_processor.feature_extractor(audios, sampling_rate=16000, return_attention_mask=True,
                                          padding="max_length", return_tensors="pt")
    return fe["input_features"], fe["attention_mask"]


def _masks(tower, frames):
    """The two padding masks the callers pass: transformers' boolean one and vLLM's additive one."""
    lengths, out_lengths = tower._get_feat_extract_output_lengths(frames)
    keep = torch.arange(1500)[None, :] < lengths[:, None]
    boolean = keep[:, None, None, :].expand(len(frames), 1, 1500, 1500)
    additive = torch.zeros(boolean.shape).masked_fill(~boolean, float("-inf"))
    return lengths, out_lengths, {"bool": boolean, "additive": additive}


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_each_clip_matches_the_padded_window_encoder(tower, features, kind):
    feats, fmask = features
    lengths, out_lengths, masks = _masks(tower, fmask.sum(-1))
    assert lengths[-1] == 1500 and lengths[0] < 4  # the cases asked for: the whole window and a near-empty clip
    with torch.no_grad():
        stock = type(tower).forward(tower, feats, attention_mask=masks[kind]).last_hidden_state
        ours = length_aware_forward(tower, feats, attention_mask=masks[kind]).last_hidden_state
    assert ours.shape[1] == max(out_lengths.tolist())  # no position past the longest clip's
    for i, k in enumerate(out_lengths.tolist()):
        assert k >= 0
        diff = (stock[i, :k] - ours[i, :k]).abs().max().item() if k else 0.0
        assert diff < 1e-5, f"{SECONDS[i]} s clip: max |Δ| {diff}"
        assert torch.count_nonzero(ours[i, k:]) == 0  # positions past the clip are zeros, never read by callers


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_the_one_call_per_batch_path_for_zero3_matches_too(tower, features, kind):
    """Under ZeRO-3 every submodule call is a collective, so the batch runs in one call cut to its longest clip."""
    feats, fmask = features
    lengths, out_lengths, masks = _masks(tower, fmask.sum(-1))
    with torch.no_grad():
        stock = type(tower).forward(tower, feats[:4], attention_mask=masks[kind][:4]).last_hidden_state
        ours = _encode(tower, feats[:4], int(lengths[:4].max()), masks[kind][:4])
    assert ours.shape[1] == int(lengths[:4].max()) // 2
    for i, k in enumerate(out_lengths[:4].tolist()):
        diff = (stock[i, :k] - ours[i, :k]).abs().max().item() if k else 0.0
        assert diff < 1e-5, f"{SECONDS[i]} s clip: max |Δ| {diff}"


def test_a_clip_does_not_depend_on_its_batch(tower, features):
    feats, fmask = features
    _, out_lengths, masks = _masks(tower, fmask.sum(-1))
    with torch.no_grad():
        batch = length_aware_forward(tower, feats, attention_mask=masks["bool"]).last_hidden_state
        for i in (1, 3):
            alone = length_aware_forward(tower, feats[i:i + 1], attention_mask=masks["bool"][i:i + 1])
            k = out_lengths[i]
            assert torch.equal(alone.last_hidden_state[0, :k], batch[i, :k])


def test_masks_that_do_not_give_lengths_fall_back_to_the_stock_encoder(tower, features):
    feats, fmask = features
    lengths, _, masks = _masks(tower, fmask[:2].sum(-1))
    assert key_lengths(masks["bool"], 1500) == lengths.tolist()
    assert key_lengths(masks["additive"], 1500) == lengths.tolist()
    assert key_lengths(None, 1500) is None
    holes = masks["bool"].clone()
    holes[..., 0] = False  # the first key dropped: not a padding mask
    assert key_lengths(holes, 1500) is None
    with torch.no_grad():
        expect = type(tower).forward(tower, feats[:2], attention_mask=holes).last_hidden_state
        got = length_aware_forward(tower, feats[:2], attention_mask=holes).last_hidden_state
    assert torch.equal(expect, got)


def test_load_model_and_load_processor_install_them_once(tiny_ckpt):
    model = load_model(tiny_ckpt)
    t = model.model.audio_tower
    assert t._polyaudio_length_aware and t.forward.__func__ is length_aware_forward
    use_length_aware_encoder(t)
    assert t.forward.__func__ is length_aware_forward
    fe = load_processor(tiny_ckpt).feature_extractor
    assert fe._torch_extract_fbank_features.__func__ is length_aware_fbank
    use_length_aware_features(fe)
    assert type(fe)._torch_extract_fbank_features is length_aware_fbank
    assert "length_aware" not in fe.to_json_string()  # the processor's saved config stays the hub's


def test_a_processor_with_length_aware_features_saves_and_reloads(tiny_ckpt, tmp_path):
    from transformers import AutoProcessor

    load_processor(tiny_ckpt).save_pretrained(tmp_path)  # eval/merge.py writes the served model's processor so
    assert AutoProcessor.from_pretrained(tmp_path).feature_extractor.feature_size == 128


def test_features_match_the_padded_window_extractor(tiny_ckpt, monkeypatch):
    """Same mel features as the stock extractor for short, odd, near-window and whole-window clips, a clip ending in
    silence, a silent clip (its floor comes from the tail frame), and a clip with a single click at its start."""
    fe = use_length_aware_features(load_processor(tiny_ckpt).feature_extractor)
    rng = np.random.default_rng(1)
    audios = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in SECONDS]
    audios.append(np.concatenate([audios[2], np.zeros(5000, np.float32)]))
    audios.append(np.zeros(16000, np.float32))
    click = np.zeros(32000, np.float32)
    click[10] = 0.9
    audios.append(click)
    kw = dict(sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
    b = fe(audios, **kw)
    with monkeypatch.context() as m:
        m.setattr(type(fe), "_torch_extract_fbank_features", type(fe)._polyaudio_stock_fbank)
        a = fe(audios, **kw)
    assert a["input_features"].shape == b["input_features"].shape == (len(audios), 128, 3000)
    assert np.array_equal(a["attention_mask"], b["attention_mask"])
    for i in range(len(audios)):
        diff = np.abs(a["input_features"][i] - b["input_features"][i]).max()
        assert diff < 1e-6, f"clip {i}: max |Δ| {diff}"
    assert b["input_features"][-2].std() == 0  # silence: one floor value everywhere, as the stock extractor gives
