"""The learner's sequence paths on every family's tiny checkpoint: shared-prompt packing and the frozen-encoder
embedding cache give the same log-probs, entropies, reference log-probs and LoRA gradients as the plain forward —
also when completions hold the family's audio special tokens (read as text, never as audio slots)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from polyaudio_rl.core.config import LoraConfig
from polyaudio_rl.core.batching import TrainItem, build_microbatches
from polyaudio_rl.core.policy_forward import token_logprobs
from polyaudio_rl.core.model import add_lora, load_model, load_processor
from polyaudio_rl.core.models import family_names, get_family
from polyaudio_rl.core.prompts import build_prompt
from tests.conftest import make_sample


@pytest.fixture(scope="module", params=family_names())
def setup(request, tiny_ckpt_of):
    path = tiny_ckpt_of(request.param)
    proc = load_processor(path)
    torch.manual_seed(0)
    policy = add_lora(load_model(path), LoraConfig(rank=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # non-zero B so the adapter changes the policy (reference ≠ policy)
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    prompts = [build_prompt(make_sample("p-a", (1.0, 0.5)), proc),
               build_prompt(make_sample("p-b", (0.5, 1.5, 2.0), question="Which clip is longest?"), proc)]
    return get_family(request.param), proc, policy, prompts


def _items(prompts, vocab, n_per=3, seed=2):
    rng = np.random.default_rng(seed)
    return [TrainItem(p, rng.integers(8, vocab - 16, size=int(rng.integers(3, 7))).tolist(),
                      advantage=1.0 if k % 2 == 0 else -1.0, group_id=g)
            for g, p in enumerate(prompts) for k in range(n_per)]


def _run(policy, mb):
    policy.zero_grad()
    lp, ent = token_logprobs(policy, mb, with_entropy=True)
    (lp * mb.mask * torch.linspace(0.5, 1.5, lp.shape[0])[:, None]).sum().backward()
    grads = torch.cat([p.grad.flatten() for n, p in policy.named_parameters() if "lora_" in n])
    with torch.no_grad(), policy.disable_adapter():
        ref = token_logprobs(policy, mb)[0]
    policy.zero_grad()
    return lp.detach(), ent, ref, grads


@pytest.mark.parametrize("special", [False, True])
def test_packing_and_cache_match_the_plain_forward(setup, special):
    family, proc, policy, prompts = setup
    items = _items(prompts, len(proc.tokenizer))
    items = [items[0], items[3], items[1], items[4], items[2], items[5]]  # groups interleaved
    if special:
        ids = family.special_ids(proc.tokenizer)
        items[1] = replace(items[1], completion_ids=[10, ids[0], 12])
        items[4] = replace(items[4], completion_ids=[ids[-1], ids[0], 11, 12, 13, 14, 15])
    runs = {}
    for cache in (False, True):
        kw = {"embed_model": policy} if cache else {}
        for share in (False, True):
            (mb,) = build_microbatches(items, proc, micro_batch_size=6, share_prompts=share, **kw)
            assert (mb.packing is not None) == share
            runs[cache, share] = _run(policy, mb)
    lp0, ent0, ref0, g0 = runs[False, False]
    assert bool((lp0 != 0).any()) and g0.abs().sum() > 0 and not torch.allclose(lp0, ref0)
    for key, (lp, ent, ref, g) in runs.items():
        torch.testing.assert_close(lp, lp0, atol=2e-5, rtol=1e-5, msg=f"log-probs {key}")
        torch.testing.assert_close(ent, ent0, atol=2e-5, rtol=1e-5, msg=f"entropy {key}")
        torch.testing.assert_close(ref, ref0, atol=2e-5, rtol=1e-5, msg=f"reference {key}")
        torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4, msg=f"grads {key}")
