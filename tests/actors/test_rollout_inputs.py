"""Input checks of a rollout batch (no engine): audio-token arithmetic and per-sample rejections."""
import numpy as np
import pytest

from polyaudio_rl.core.prompts import build_prompt
from polyaudio_rl.core.models import get_family
from actors.rollout_engine import RolloutInputError, check_prompts, prompt_token_count

FAMILY = get_family("qwen2_audio")
from tests.conftest import make_sample


@pytest.mark.parametrize("seconds, tokens", [(1.0, 25), (1.5, 37), (2.0, 50), (30.0, 750), (0.0, 0)])
def test_audio_token_count(seconds, tokens):
    # mel frames = n/160; conv stride 2: (f-1)//2+1; avg-pool 2: (c-2)//2+1. 1 s: 100 -> 50 -> 25.
    assert FAMILY.audio_token_count(int(seconds * 16000)) == tokens


def test_prompt_token_count_matches_the_processor(tiny_processor):
    from polyaudio_rl.core.prompts import processor_inputs

    p = build_prompt(make_sample("n", (1.0, 2.0, 1.5)), tiny_processor)
    assert prompt_token_count(p, tiny_processor.tokenizer, FAMILY) == processor_inputs([p], tiny_processor)["input_ids"].shape[1]


@pytest.fixture
def check(tiny_processor):
    def _check(prompts, gids=None, **kw):
        limits = dict(max_clips=5, max_clip_seconds=30.0, max_model_len=1024, max_new_tokens=8)
        limits.update(kw)
        check_prompts(prompts, gids or [p.sample_id for p in prompts], tokenizer=tiny_processor.tokenizer,
                      family=FAMILY, placeholder=tiny_processor.audio_token, **limits)

    return _check


def test_every_bad_sample_is_named_and_good_ones_are_not(tiny_processor, check):
    ok = build_prompt(make_sample("ok", (1.0, 1.0)), tiny_processor)
    six = build_prompt(make_sample("six", (0.5,) * 6), tiny_processor, max_clips=10)
    long = build_prompt(make_sample("long", (1.0, 30.5)), tiny_processor, max_clip_seconds=60.0)
    check([ok])
    with pytest.raises(RolloutInputError) as err:
        check([ok, six, long])
    msg = str(err.value)
    assert "2 problem(s)" in msg and "sample six: 6 clips, more than the allowed 5" in msg
    assert "sample long, clip 2: 30.50 s, over the 30 s limit" in msg and "sample ok" not in msg
    with pytest.raises(RolloutInputError, match="sample ok: prompt of .* exceeds rollout.max_model_len 60"):
        check([ok], max_model_len=60)
    with pytest.raises(RolloutInputError, match="group id 'g' repeats item 0"):
        check([ok, ok], ["g", "g"])
    with pytest.raises(RolloutInputError, match="empty rollout batch"):
        check([])
    bad = build_prompt(make_sample("nan", (1.0, 1.0)), tiny_processor)
    bad.audios[1] = np.zeros((2, 10), dtype=np.float32)
    with pytest.raises(RolloutInputError, match="sample nan, clip 2: audio must be a 1-D"):
        check([bad])


@pytest.mark.parametrize("name", ["qwen2_audio", "qwen2_5_omni"])
def test_family_limits_name_the_sample(tiny_ckpt_of, name):
    """More clips than the family accepts, or a prompt over max_model_len at the family's audio-token rate: an error
    naming the sample and the family."""
    from polyaudio_rl.core.model import load_processor

    family = get_family(name)
    proc = load_processor(tiny_ckpt_of(name))
    many = build_prompt(make_sample("many", (0.5,) * (family.max_clips + 1)), proc, max_clips=10)
    long = build_prompt(make_sample("long", (10.0, 10.0)), proc)
    n_long = prompt_token_count(long, proc.tokenizer, family)
    assert n_long >= 2 * family.audio_token_count(160000)
    with pytest.raises(RolloutInputError) as err:
        check_prompts([many, long], ["many", "long"], max_clips=10, max_clip_seconds=30.0, max_model_len=n_long + 7,
                      max_new_tokens=8, tokenizer=proc.tokenizer, family=family, placeholder=proc.audio_token)
    msg = str(err.value)
    assert f"many: {family.max_clips + 1} clips, more than the {name} family accepts ({family.max_clips})" in msg
    assert f"long: prompt of {n_long} tokens ({name}: " in msg and f"exceeds rollout.max_model_len {n_long + 7}" in msg


def test_cut_at_stop_keeps_the_tokens_up_to_the_first_stop_string():
    from actors.rollout_engine import cut_at_stop

    pieces = {1: "<", 2: "answer", 3: ">", 4: "Clip 2.", 5: "</", 6: "answer", 7: ">", 8: "Clip"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    ids, lps = [1, 2, 3, 4, 5, 6, 7, 8], [-0.1 * i for i in range(1, 9)]
    assert cut_at_stop(ids, lps, "length", decode, ["</answer>"]) == (ids[:7], lps[:7], "stop")
    assert cut_at_stop(ids, lps, "length", decode, ["Clip", "</answer>"]) == (ids[:4], lps[:4], "stop")  # the first
    assert cut_at_stop(ids, lps, "length", decode, []) == (ids, lps, "length")                   # no stop strings
    assert cut_at_stop(ids[:6], lps[:6], "length", decode, ["</answer>"]) == (ids[:6], lps[:6], "length")  # not reached


def test_rollout_stop_must_be_non_empty_strings():
    from polyaudio_rl.core.config import load_config

    with pytest.raises(ValueError, match="rollout.stop must be a list of non-empty strings"):
        load_config("configs/tiny_cpu.yaml", ["rollout.stop=['']"])
