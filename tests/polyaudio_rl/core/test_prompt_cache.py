"""The learner's prompt cache: same tensors cold or warm, keyed by content, bounded (in-process, tiny checkpoint)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from polyaudio_rl.core.config import LoraConfig
from polyaudio_rl.core.batching import TrainItem, build_microbatches, encode_prompts, prompt_embeddings
from polyaudio_rl.core.model import add_lora, load_model
from polyaudio_rl.core.prompt_cache import PromptCache, prompt_key
from polyaudio_rl.core.prompts import prompt_from_arrays


def _prompt(processor, sid, seconds, freq=220.0):
    sr = 16000
    clips = [(0.3 * np.sin(2 * np.pi * freq * (i + 1) * np.arange(int(s * sr)) / sr)).astype(np.float32)
             for i, s in enumerate(seconds)]
    return prompt_from_arrays(sid, "Which clip is the loudest?", clips, processor)


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    torch.manual_seed(0)
    return add_lora(load_model(tiny_ckpt), LoraConfig(rank=8, alpha=16, dropout=0.0))


@pytest.fixture(scope="module")
def two(tiny_processor):
    return [_prompt(tiny_processor, "a", (1.0, 0.5)), _prompt(tiny_processor, "b", (0.5, 1.5, 0.7))]


def test_key_is_the_content_not_the_object(tiny_processor, two):
    a, b = two
    same = _prompt(tiny_processor, "other-id", (1.0, 0.5))  # same text and samples, another object and id
    assert prompt_key(same) == prompt_key(a) and prompt_key(a) != prompt_key(b)
    nudged = replace(a, audios=[a.audios[0].copy(), a.audios[1].copy()])
    nudged.audios[1][100] += 1e-3  # one sample of one clip
    assert prompt_key(nudged) != prompt_key(a)
    assert prompt_key(replace(a, text=a.text + " ")) != prompt_key(a)


def test_cached_entries_equal_a_fresh_encoding_and_are_reused(tiny_processor, policy, two):
    cache = PromptCache(64)
    first = cache.encode(two, tiny_processor, policy)
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 2)
    for p, e in zip(two, first):  # each prompt exactly as a one-prompt encoding + encoder pass gives it
        (fresh,) = encode_prompts([p], tiny_processor)
        (emb,) = prompt_embeddings(policy, [fresh], tiny_processor.tokenizer.pad_token_id)
        assert torch.equal(e.input_ids, fresh.input_ids) and torch.equal(e.embeds, emb)
        assert e.input_features is None  # the embeddings stand for the features: only they are kept
    again = cache.encode([two[1], two[0]], tiny_processor, policy)
    assert again[0] is first[1] and again[1] is first[0] and (cache.hits, cache.misses) == (2, 2)
    plain = cache.encode(two[:1], tiny_processor)[0]  # without the encoder: a separate entry, features kept
    assert cache.misses == 3 and plain.embeds is None
    assert torch.equal(plain.input_features, encode_prompts(two[:1], tiny_processor)[0].input_features)
    assert cache.encode(two[:1], tiny_processor)[0] is plain


def test_budget_evicts_least_recently_used(tiny_processor, two):
    a, b = two
    one = PromptCache(64).encode([b], tiny_processor)[0]
    size_b = sum(t.numel() * t.element_size() for t in (one.input_ids, one.input_features, one.feature_attention_mask))
    cache = PromptCache(1.5 * size_b / 2**20)  # room for one of the two
    cache.encode([a, b], tiny_processor)
    assert len(cache) == 1 and cache.evictions == 1 and cache.nbytes <= cache.budget
    cache.encode([b], tiny_processor)
    assert cache.hits == 1  # b, the most recent, stayed
    tiny = PromptCache(0.001)  # smaller than any entry: used, never kept
    assert tiny.encode([a], tiny_processor)[0].input_ids.numel() > 0 and len(tiny) == 0 and tiny.nbytes == 0


def test_microbatches_are_identical_cold_warm_and_mixed(tiny_processor, policy, two):
    items = [TrainItem(p, [5 + k, 9, 11 + k], advantage=1.0 - k, group_id=g)
             for g, p in enumerate(two) for k in range(2)]
    cold = build_microbatches(items, tiny_processor, 2, embed_model=policy, cache=PromptCache(64))
    warm_cache = PromptCache(64)
    warm_cache.encode(two[1:], tiny_processor, policy)  # one prompt prefetched, the other built in the call
    warm = build_microbatches(items, tiny_processor, 2, embed_model=policy, cache=warm_cache)
    assert (warm_cache.hits, warm_cache.misses) == (1, 2)
    for c, w in zip(cold, warm):
        assert all(torch.equal(x, y) for x, y in zip(c.prompt_embeds, w.prompt_embeds))
        assert torch.equal(c.model_inputs["input_ids"], w.model_inputs["input_ids"]) and torch.equal(c.mask, w.mask)
        assert "input_features" not in c.model_inputs  # the encoder does not run again: no features carried
    plain = build_microbatches(items, tiny_processor, 2, embed_model=policy)  # the batched path (no cache)
    for c, p in zip(cold, plain):
        for x, y in zip(c.prompt_embeds, p.prompt_embeds):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
