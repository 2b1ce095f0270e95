"""Sequence construction and the GRPO update direction on the tiny Qwen2-Audio (in-process, no Ray/DeepSpeed)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from polyaudio_rl.core.config import GRPOConfig, LoraConfig
from polyaudio_rl.core.batching import BatchError, TrainItem, build_microbatches
from polyaudio_rl.core.grpo_loss import GlobalCounts, grpo_microbatch_loss
from polyaudio_rl.core.policy_forward import token_logprobs
from polyaudio_rl.core.model import add_lora, load_model
from polyaudio_rl.core.prompts import build_prompt, processor_inputs


@pytest.fixture(scope="module")
def prompts(tiny_processor):
    from polyaudio_rl.core.audio import encode_flac
    from polyaudio_rl.core.schema import Clip, Sample

    def make_sample(sid, durations, question="Which clip is the loudest?"):
        sr = 16000
        clips = []
        for i, d in enumerate(durations):
            t = np.arange(int(d * sr)) / sr
            wave = (0.3 * np.sin(2 * np.pi * 220.0 * (i + 1) * t)).astype(np.float32)
            clips.append(Clip(audio=encode_flac(wave, sr), sample_rate=sr, duration=d, source_id=f"tone{i}", licence="CC0"))
        return Sample(id=sid, task="comparison", split="train", clips=clips, question=question, answer="Audio 1.",
                      key={"type": "clip", "value": 1}, relevant_clips=[1])

    return [
        build_prompt(make_sample("p-a", durations=(1.0, 0.5)), tiny_processor),
        build_prompt(make_sample("p-b", durations=(0.5, 1.5, 2.0), question="Which clip is longest?"), tiny_processor),
    ]


def _items(prompts, n_per=4, seed=0, lo=8, hi=1000):
    rng = np.random.default_rng(seed)
    items = []
    for g, p in enumerate(prompts):
        for k in range(n_per):
            ids = rng.integers(lo, hi, size=int(rng.integers(3, 7))).tolist()
            items.append(TrainItem(p, ids, advantage=1.0 if k % 2 == 0 else -1.0, group_id=g))
    return items


def test_sequences_prompt_plus_completion_mask_and_clip_order(prompts, tiny_processor):
    items = _items(prompts, n_per=2)
    # interleave groups so clip order across sequences matters (2 clips, 3 clips, 2, 3)
    items = [items[0], items[2], items[1], items[3]]
    (mb,) = build_microbatches(items, tiny_processor, micro_batch_size=4)
    ids = mb.model_inputs["input_ids"]
    feats = []
    for i, it in enumerate(items):
        single = processor_inputs([it.prompt], tiny_processor)
        p, c = single["input_ids"].shape[1], len(it.completion_ids)
        assert ids[i, :p].tolist() == single["input_ids"][0].tolist()  # processor-expanded prompt ids, unchanged
        assert ids[i, p : p + c].tolist() == it.completion_ids  # completion ids as given, never re-tokenised
        # shifted mask: position t predicts ids[t+1]; exactly the completion tokens carry loss
        assert mb.mask[i].nonzero().flatten().tolist() == list(range(p - 1, p - 1 + c))
        assert mb.targets[i, p - 1 : p - 1 + c].tolist() == it.completion_ids
        feats.append(single["input_features"])
    torch.testing.assert_close(mb.model_inputs["input_features"], torch.cat(feats))
    assert mb.model_inputs["input_features"].shape[0] == 2 + 3 + 2 + 3
    assert mb.advantages.tolist() == [1.0, 1.0, -1.0, -1.0]


def test_filler_microbatches_carry_no_loss(prompts, tiny_processor):
    items = _items(prompts[:1], n_per=1)
    mbs = build_microbatches(items, tiny_processor, micro_batch_size=2, num_micro=3)
    assert len(mbs) == 3
    assert mbs[0].mask.sum() == len(items[0].completion_ids)
    assert mbs[1].mask.sum() == 0 and mbs[2].mask.sum() == 0 and mbs[1].advantages.tolist() == [0.0]
    with pytest.raises(BatchError, match="do not fit"):
        build_microbatches(_items(prompts), tiny_processor, micro_batch_size=2, num_micro=3)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(completion_ids=[]), "sample p-a: completion_ids is empty"),
        (dict(completion_ids=[5, 10**6]), r"sample p-a: completion_ids has token ids outside \[0, "),
        (dict(completion_ids=[5, 6], old_logprobs=[-0.1]), "sample p-a: old_logprobs has 1 entries for 2"),
        (dict(completion_ids=[5, 6], old_logprobs=[-0.1, float("nan")]), "sample p-a: old_logprobs must be finite"),
    ],
)
def test_bad_items_name_the_sample(prompts, tiny_processor, change, message):
    item = replace(_items(prompts[:1], n_per=1)[0], **change)
    with pytest.raises(BatchError, match=message):
        build_microbatches([item], tiny_processor, micro_batch_size=1)


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    torch.manual_seed(0)
    return add_lora(load_model(tiny_ckpt), LoraConfig(rank=8, alpha=16, dropout=0.0))


def _seq_logp(model, mbs):
    with torch.no_grad():
        return torch.cat([(token_logprobs(model, mb)[0] * mb.mask).sum(-1) for mb in mbs])


def test_batched_logprobs_equal_single_sequence_logprobs(policy, prompts, tiny_processor):
    items = _items(prompts, n_per=1)  # 2 and 3 clips: different prompt lengths, so one row is padded
    batched = _seq_logp(policy, build_microbatches(items, tiny_processor, micro_batch_size=2))
    single = torch.cat([_seq_logp(policy, build_microbatches([it], tiny_processor, 1)) for it in items])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-5)


def test_logprobs_from_the_cut_output_projection_equal_the_full_logits(policy, prompts, tiny_processor):
    """token_logprobs projects only from the batch's first completion position on; same values (log-prob and
    entropy) as log-softmax over the model's full logits, zeros on prompt and padding positions."""
    items = _items(prompts, n_per=2)  # two prompt lengths: the cut starts at the shorter prompt's completion
    mb = build_microbatches(items, tiny_processor, micro_batch_size=4)[0]
    with torch.no_grad():
        lp, ent = token_logprobs(policy, mb, with_entropy=True)
        logits = policy(**mb.model_inputs, use_cache=False).logits[:, :-1].float()
    full = torch.log_softmax(logits, -1)
    want = full.gather(-1, mb.targets[..., None])[..., 0] * mb.mask
    want_ent = -(full.exp() * full).sum(-1) * mb.mask
    first = int((mb.mask > 0).any(0).nonzero()[0])
    assert first > 0 and lp.shape == mb.mask.shape
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)


def test_cached_audio_embeddings_give_the_same_logprobs_and_grads(policy, prompts, tiny_processor):
    items = _items(prompts, n_per=2)
    plain = build_microbatches(items, tiny_processor, micro_batch_size=4)
    cached = build_microbatches(items, tiny_processor, micro_batch_size=4, embed_model=policy)
    assert plain[0].prompt_embeds is None and len(cached[0].prompt_embeds) == 4
    # group members share their prompt's embeddings (same values), the two prompts differ in length (clip count)
    torch.testing.assert_close(cached[0].prompt_embeds[0], cached[0].prompt_embeds[1])
    assert cached[0].prompt_embeds[0].shape[0] != cached[0].prompt_embeds[2].shape[0]
    grads = []
    for mbs in (plain, cached):
        policy.zero_grad()
        lp = torch.cat([token_logprobs(policy, mb)[0] for mb in mbs])
        (lp * torch.cat([mb.mask for mb in mbs])).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in policy.named_parameters() if "lora_B" in n]))
        if len(grads) == 1:
            ref = lp.detach()
    torch.testing.assert_close(lp.detach(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0
    policy.zero_grad()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grpo_update_direction_follows_advantage_sign(tiny_ckpt, prompts, tiny_processor, sign):
    """A GRPO step raises log π of the positively-advantaged completions and lowers the negative ones.

    On-policy (ratio 1, clip inactive) and with the adapter's B = 0 (policy = reference, so the KL gradient is 0),
    token-mean GRPO on advantages sign·A_i is L = -sign·Σ_i A_i Σ_t log π_it / T. A plain SGD step of size lr moves
    log π_i by sign·(lr/T)·Σ_j A_j g_i·g_j to first order (g_i = ∇ log π_i); on this batch the Gram matrix g_i·g_j is
    diagonally dominant (cross terms < 0.7 of the diagonal), so every completion moves with its advantage's sign,
    and Σ_i A_i Δlog π_i = sign·T·lr·‖∇L‖². We take a step sized to move that sum by 0.05 nats and check each item's
    sign and the sum's size. With the advantages negated (sign = -1) every movement reverses: the assertions
    discriminate.
    (Plain SGD, not Adam: Adam's per-coordinate normalisation turns float noise into full-size steps.)
    """
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_ckpt), LoraConfig(rank=8, alpha=16, dropout=0.0))
    model.train()
    cfg = GRPOConfig(kl_coef=0.04, clip_low=0.2, clip_high=0.28, loss_agg="token-mean")
    base = _items(prompts, n_per=2, seed=1)
    items = [replace(it, advantage=sign * it.advantage) for it in base]  # the loss sees sign·A
    mbs = build_microbatches(items, tiny_processor, micro_batch_size=4, embed_model=model)
    before = _seq_logp(model, mbs)
    for mb in mbs:  # on-policy behaviour log-probs and the reference (= base model, adapter disabled)
        with torch.no_grad():
            mb.old_logp = token_logprobs(model, mb)[0]
    with torch.no_grad(), model.disable_adapter():
        refs = [token_logprobs(model, mb)[0] for mb in mbs]
    tokens = int(sum(mb.mask.sum() for mb in mbs))
    counts = GlobalCounts(tokens=tokens, seqs=len(items), norm_len=8)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    for mb, ref in zip(mbs, refs):
        loss, _ = grpo_microbatch_loss(token_logprobs(model, mb)[0], mb, ref, cfg, counts)
        loss.backward()
    grad_sq = float(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))
    assert grad_sq > 0
    target = 0.05  # nats of Σ_i A_i Δlog π_i, small enough for the first-order estimate
    lr = target / (tokens * grad_sq)
    torch.optim.SGD(params, lr=lr).step()
    delta = _seq_logp(model, mbs) - before
    adv = torch.tensor([it.advantage for it in base])
    assert (torch.sign(delta) == torch.sign(adv) * sign).all(), f"Δ log π {delta.tolist()} vs A {adv.tolist()}"
    moved = float((adv * delta).sum())
    assert moved * sign > 0, f"Σ A·Δlog π = {moved} (sign {sign}); Δ {delta.tolist()} vs A {adv.tolist()}"
    assert 0.5 * target < abs(moved) < 1.5 * target, f"Σ A·Δlog π = {moved}, first-order estimate {sign * target}"


# ------------------------------------------------------------------------- audio special tokens inside completions
def _decode_logprobs(model, processor, prompt, completion):
    """What ``generate`` / vLLM compute: the prompt once (audio merged), then each completion token fed alone with
    the KV cache (a decoded ``<|AUDIO|>`` is its text embedding, never an audio slot)."""
    batch = processor_inputs([prompt], processor)
    with torch.no_grad():
        out = model(**batch, use_cache=True)
        lps, past, logits = [], out.past_key_values, out.logits[0, -1]
        n = batch["input_ids"].shape[1]
        for k, tok in enumerate(completion):
            lps.append(float(torch.log_softmax(logits.float(), -1)[tok]))
            attn = torch.ones((1, n + k + 1), dtype=torch.long)
            step = model(input_ids=torch.tensor([[tok]]), attention_mask=attn, past_key_values=past, use_cache=True)
            past, logits = step.past_key_values, step.logits[0, -1]
    return torch.tensor(lps)


def test_audio_special_ids_of_the_tiny_tokenizer(tiny_processor):
    from polyaudio_rl.core.batching import audio_special_ids

    tok = tiny_processor.tokenizer
    assert audio_special_ids(tok) == sorted(tok.convert_tokens_to_ids(t)
                                            for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"))
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == 4  # the id of the reproduction


def test_completion_audio_tokens_are_not_audio_slots_cache_on_and_off(policy, prompts, tiny_processor):
    """Issue 14 item 5: a 2-clip prompt with completion [10, <|AUDIO|>, 12] raised "Audio features and audio
    tokens do not match" with the cache off. Now: no error, the same log-probs (and gradients) with the cache on
    and off, for the policy and the reference (adapter disabled) pass alike, equal to token-by-token decoding."""
    tok = tiny_processor.tokenizer
    audio, bos, eos = (tok.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"))
    completions = [[10, audio, 12], [bos, audio, audio, eos, 11], [audio], [10, 11, 12, bos]]
    items = [TrainItem(prompts[i % 2], c, advantage=1.0) for i, c in enumerate(completions)]
    plain = build_microbatches(items, tiny_processor, micro_batch_size=4)
    cached = build_microbatches(items, tiny_processor, micro_batch_size=4, embed_model=policy)
    (mb,) = plain
    # the model's input ids hold the pad id at those completion positions, the targets keep the true ids
    for i, (it, c) in enumerate(zip(items, completions)):
        p = len(processor_inputs([it.prompt], tiny_processor)["input_ids"][0])
        assert mb.targets[i, p - 1 : p - 1 + len(c)].tolist() == c
        assert mb.true_ids[i, p : p + len(c)].tolist() == c
        fed = mb.model_inputs["input_ids"][i, p : p + len(c)].tolist()
        assert fed == [tok.pad_token_id if t in (audio, bos, eos) else t for t in c]
    grads, lps = [], []
    for mbs in (plain, cached):
        policy.zero_grad()
        lp = token_logprobs(policy, mbs[0])[0]
        (lp * mbs[0].mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in policy.named_parameters() if "lora_B" in n]))
        with torch.no_grad(), policy.disable_adapter():
            ref = token_logprobs(policy, mbs[0])[0]
        lps.append((lp.detach(), ref))
    policy.zero_grad()
    torch.testing.assert_close(lps[1][0], lps[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lps[1][1], lps[0][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0
    for i, it in enumerate(items):  # the same as decoding: each completion token is read as text
        got = lps[0][0][i][mb.mask[i] > 0]
        torch.testing.assert_close(got, _decode_logprobs(policy, tiny_processor, it.prompt, it.completion_ids),
                                   atol=1e-4, rtol=1e-4)


def test_completion_without_audio_tokens_is_fed_unchanged(prompts, tiny_processor):
    (mb,) = build_microbatches(_items(prompts, n_per=1), tiny_processor, micro_batch_size=2)
    assert mb.true_ids is None


# ------------------------------------------------------------------------- shared-prompt packing (core/packing.py)
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("special", [False, True])
def test_packed_prompts_give_the_same_logprobs_entropy_and_grads(policy, prompts, tiny_processor, cache, special):
    """share_prompts runs each prompt once per micro-batch (one packed row per prompt, a block mask): the same
    log-probs, entropies, reference log-probs and LoRA gradients as one row per completion — with the audio cache
    on and off, groups interleaved in the micro-batch, completions of different lengths, and completions holding
    audio special tokens (read as text, never as audio slots)."""
    items = _items(prompts, n_per=3, seed=2)
    items = [items[0], items[3], items[1], items[4], items[2], items[5]]  # a, b, a, b, a, b
    if special:
        tok = tiny_processor.tokenizer
        audio, bos = tok.convert_tokens_to_ids("<|AUDIO|>"), tok.convert_tokens_to_ids("<|audio_bos|>")
        items[1] = replace(items[1], completion_ids=[10, audio, 12])
        items[4] = replace(items[4], completion_ids=[bos, audio, 11, 12, 13, 14, 15])
    kw = {"embed_model": policy} if cache else {}
    plain = build_microbatches(items, tiny_processor, micro_batch_size=6, **kw)
    packed = build_microbatches(items, tiny_processor, micro_batch_size=6, share_prompts=True, **kw)
    assert plain[0].packing is None and packed[0].packing is not None
    assert packed[0].packing.ids.shape[0] == 2  # two prompts → two rows
    out = []
    for mbs in (plain, packed):
        policy.zero_grad()
        lp, ent = token_logprobs(policy, mbs[0], with_entropy=True)
        (lp * mbs[0].mask * torch.linspace(0.5, 1.5, lp.shape[0])[:, None]).sum().backward()
        grads = torch.cat([p.grad.flatten() for n, p in policy.named_parameters() if "lora_" in n])
        with torch.no_grad(), policy.disable_adapter():
            ref = token_logprobs(policy, mbs[0])[0]
        out.append((lp.detach(), ent, ref, grads))
    policy.zero_grad()
    (lp0, ent0, ref0, g0), (lp1, ent1, ref1, g1) = out
    assert lp1.shape == lp0.shape and bool((lp0 != 0).any())
    torch.testing.assert_close(lp1, lp0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ref1, ref0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    assert g0.abs().sum() > 0


def test_packing_only_where_a_prompt_repeats(prompts, tiny_processor):
    """One item per prompt (SFT) has nothing to share: the micro-batch stays one row per item."""
    items = _items(prompts, n_per=1)
    (mb,) = build_microbatches(items, tiny_processor, micro_batch_size=2, share_prompts=True)
    assert mb.packing is None and mb.model_inputs["input_ids"].shape[0] == 2


def test_packing_with_an_attention_that_takes_no_4d_mask_is_a_clear_error(policy, prompts, tiny_processor):
    items = _items(prompts, n_per=2)
    (mb,) = build_microbatches(items, tiny_processor, micro_batch_size=4, share_prompts=True)
    cfg = policy.get_base_model().model.language_model.config
    saved = cfg._attn_implementation
    cfg._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(BatchError, match="share_prompts=false"):
            token_logprobs(policy, mb)
    finally:
        cfg._attn_implementation = saved
