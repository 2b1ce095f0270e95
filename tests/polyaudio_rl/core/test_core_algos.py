"""Table tests for polyaudio_rl/core/core_algos.py: every expected value below is computed by hand (shown inline)."""
import math

import pytest
import torch

from polyaudio_rl.core import core_algos as ca

# rewards and groups shared by the advantage tables: group a = [1, 0, 0, 0], group b = [2, 4] (interleaved)
REWARDS = [1.0, 0.0, 2.0, 0.0, 4.0, 0.0]
GROUPS = ["a", "a", "b", "a", "b", "a"]
# group a: mean 0.25, unbiased std sqrt((0.75² + 3·0.25²)/3) = 0.5;  group b: mean 3, std sqrt(2)
# batch: mean 7/6, unbiased std sqrt(12.8333/5) = 1.602082
ADV_TABLE = {
    "grpo": [1.5, -0.5, -1 / math.sqrt(2), -0.5, 1 / math.sqrt(2), -0.5],
    "drgrpo": [0.75, -0.25, -1.0, -0.25, 1.0, -0.25],
    "batch_std": [0.75 / 1.602082, -0.25 / 1.602082, -1 / 1.602082, -0.25 / 1.602082, 1 / 1.602082, -0.25 / 1.602082],
    # r − 7/6 over the batch std: 1 → −1/6, 0 → −7/6, 2 → 5/6, 4 → 17/6
    "reinforce_pp": [-1 / 6 / 1.602082, -7 / 6 / 1.602082, 5 / 6 / 1.602082, -7 / 6 / 1.602082, 17 / 6 / 1.602082,
                     -7 / 6 / 1.602082],
}


@pytest.mark.parametrize("name", sorted(ADV_TABLE))
def test_advantage_table(name):
    adv = ca.compute_advantages(REWARDS, GROUPS, estimator=name, eps=0.0)
    assert adv.tolist() == pytest.approx(ADV_TABLE[name], abs=1e-5)


def test_every_registered_estimator_is_tabled():
    assert set(ca.ADV_ESTIMATORS) == set(ADV_TABLE)


def test_advantages_degenerate_groups():
    # a group of one and a zero-spread group carry no signal: advantage 0 (eps keeps 0/0 finite)
    adv = ca.compute_advantages([3.0, 1.0, 1.0], ["solo", "flat", "flat"], "grpo", eps=1e-6)
    assert adv.tolist() == [0.0, 0.0, 0.0]
    # the eps in the denominator: group [0, 1]: std = 1/sqrt(2) → ±0.5/(0.70711 + 0.1)
    adv = ca.compute_advantages([0.0, 1.0], [7, 7], "grpo", eps=0.1)
    assert adv.tolist() == pytest.approx([-0.5 / (0.5**0.5 + 0.1), 0.5 / (0.5**0.5 + 0.1)], abs=1e-6)


def test_reinforce_pp_gives_zero_spread_groups_signal():
    # group "wrong": all 0, group "right": all 1 (both zero-spread). grpo: all 0. reinforce_pp: batch mean 0.5,
    # unbiased std sqrt(4·0.25/3) = 0.57735 → ∓0.5/0.57735 = ∓0.866025
    r, g = [0.0, 0.0, 1.0, 1.0], ["wrong", "wrong", "right", "right"]
    assert ca.compute_advantages(r, g, "grpo").tolist() == [0.0, 0.0, 0.0, 0.0]
    assert ca.compute_advantages(r, g, "reinforce_pp", eps=0.0).tolist() == pytest.approx(
        [-0.866025, -0.866025, 0.866025, 0.866025], abs=1e-6)
    # one completion, or a batch that all scored the same: no signal
    assert ca.compute_advantages([1.0], ["a"], "reinforce_pp").tolist() == [0.0]
    assert ca.compute_advantages([1.0, 1.0], ["a", "b"], "reinforce_pp").tolist() == [0.0, 0.0]


def test_advantages_bad_input():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        ca.compute_advantages([1.0, 0.0], [0, 0], "ppo")
    with pytest.raises(ValueError, match=r"non-finite rewards at completions \[1\]"):
        ca.compute_advantages([1.0, float("nan")], [0, 0])
    with pytest.raises(ValueError, match="one group id each"):
        ca.compute_advantages([1.0, 0.0], [0])


# --------------------------------------------------------------------------------------------------------------
# PPO clipped surrogate, ε_low = 0.2, ε_high = 0.28 (ratio window [0.8, 1.28])
# rows: (advantage, ratio, expected loss, clipped?, expected d loss / d logp)
#   d(−A·ρ)/d logp = −A·ρ inside the window; 0 where the clipped branch is active
SURROGATE_TABLE = [
    (1.0, 1.00, -1.00, False, -1.00),  # on-policy
    (1.0, 1.27, -1.27, False, -1.27),  # just inside the high edge
    (1.0, 1.50, -1.28, True, 0.0),  # beyond high edge: objective capped at 1.28·A, no gradient
    (1.0, 0.50, -0.50, False, -0.50),  # A>0 below the low edge is NOT clipped (pessimistic min)
    (-1.0, 0.81, 0.81, False, 0.81),  # just inside the low edge
    (-1.0, 0.50, 0.80, True, 0.0),  # beyond low edge for A<0: capped at 0.8·|A|, no gradient
    (-1.0, 1.50, 1.50, False, 1.50),  # A<0 above the high edge is NOT clipped
    (2.0, 1.10, -2.20, False, -2.20),  # scales with A
    (0.0, 3.00, 0.00, False, 0.00),  # zero advantage: nothing
]


@pytest.mark.parametrize("adv,ratio,loss,clipped,grad", SURROGATE_TABLE)
def test_ppo_clip_table(adv, ratio, loss, clipped, grad):
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    logp = (old + math.log(ratio)).clone().requires_grad_(True)
    out, was_clipped = ca.ppo_clip_loss(logp, old, torch.tensor([adv], dtype=torch.float64), clip_low=0.2, clip_high=0.28)
    assert out.item() == pytest.approx(loss, abs=1e-9)
    assert bool(was_clipped.item()) is clipped
    out.sum().backward()
    assert logp.grad.item() == pytest.approx(grad, abs=1e-9)


@pytest.mark.parametrize("adv,ratio,loss", [(1.0, 1.28, -1.28), (-1.0, 0.8, 0.8)])
def test_ppo_clip_exactly_at_edges(adv, ratio, loss):
    old = torch.zeros(1, 1, dtype=torch.float64)
    out, _ = ca.ppo_clip_loss(old + math.log(ratio), old, torch.tensor([adv], dtype=torch.float64), 0.2, 0.28)
    assert out.item() == pytest.approx(loss, abs=1e-9)


def test_ppo_clip_decoupled_edges():
    # same ratio 1.25: clipped with symmetric ε=0.2 (window top 1.2), not with ε_high=0.28
    old = torch.zeros(1, 1)
    logp = old + math.log(1.25)
    sym, c_sym = ca.ppo_clip_loss(logp, old, torch.ones(1), 0.2, 0.2)
    dapo, c_dapo = ca.ppo_clip_loss(logp, old, torch.ones(1), 0.2, 0.28)
    assert (sym.item(), bool(c_sym)) == (pytest.approx(-1.2), True)
    assert (dapo.item(), bool(c_dapo)) == (pytest.approx(-1.25), False)


# --------------------------------------------------------------------------------------------------------------
# KL estimators. d = ref − logp.  k1 = −d, k2 = d²/2, k3 = e^d − d − 1
KL_TABLE = [
    # logp,          ref,            k1,        k2,                  k3
    (math.log(0.5), math.log(0.25), math.log(2), 0.5 * math.log(2) ** 2, 0.5 + math.log(2) - 1),  # 0.193147
    (math.log(0.25), math.log(0.5), -math.log(2), 0.5 * math.log(2) ** 2, 2 - math.log(2) - 1),  # 0.306853
    (-1.3, -1.3, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("logp,ref,k1,k2,k3", KL_TABLE)
def test_kl_table(logp, ref, k1, k2, k3):
    lp, rf = torch.tensor([[logp]], dtype=torch.float64), torch.tensor([[ref]], dtype=torch.float64)
    assert ca.kl_k1(lp, rf).item() == pytest.approx(k1, abs=1e-9)
    assert ca.kl_k2(lp, rf).item() == pytest.approx(k2, abs=1e-9)
    assert ca.get_kl_estimator("k3")(lp, rf).item() == pytest.approx(k3, abs=1e-9)


def test_k3_clamped_and_gradient():
    # d = 5: e^5 − 6 = 142.4 → clamped at 10
    assert ca.kl_k3(torch.tensor([0.0]), torch.tensor([5.0])).item() == pytest.approx(10.0)
    # d k3 / d logp = 1 − e^d  (d = ref − logp): at logp = log .5, ref = log .25 → 1 − 0.5 = 0.5
    lp = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
    ca.kl_k3(lp, torch.tensor([math.log(0.25)], dtype=torch.float64)).sum().backward()
    assert lp.grad.item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------
# aggregation. Masked positions hold 100 to show they never leak in; the last row is an all-padding dummy.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0], [5.0, 6.0, 100.0, 100.0], [100.0] * 4])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
AGG_TABLE = {
    "token-mean": 21 / 6,  # (1+2+3+4+5+6) / 6 tokens = 3.5
    "seq-mean-token-mean": (2.0 + 4.0 + 5.5) / 3,  # per-seq means 2, 4, 5.5 over 3 sequences = 3.8333
    "seq-mean-token-sum-norm": 21 / (3 * 4),  # Σ / (3 seqs · L=4) = 1.75
}


@pytest.mark.parametrize("mode", sorted(AGG_TABLE))
def test_agg_table(mode):
    assert ca.agg_loss(LOSS, MASK, mode, norm_len=4).item() == pytest.approx(AGG_TABLE[mode])
    # explicit global counts equal to the local ones give the same number
    tok, seqs = ca.global_counts(MASK)
    assert (tok, seqs) == (6, 3)
    assert ca.agg_loss(LOSS, MASK, mode, global_tokens=tok, global_seqs=seqs, norm_len=4).item() == pytest.approx(
        AGG_TABLE[mode]
    )


def test_every_registered_agg_is_tabled():
    assert set(ca.LOSS_AGGS) == set(AGG_TABLE)


def test_agg_errors():
    with pytest.raises(ValueError, match="norm_len"):
        ca.agg_loss(LOSS, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        ca.agg_loss(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match="differ in shape"):
        ca.agg_loss(LOSS, MASK[:, :3], "token-mean")


def _grpo_loss_matrix(logp, old, ref, adv, mask, mode, beta, tok, seqs):
    pg, _ = ca.ppo_clip_loss(logp, old, adv, 0.2, 0.28)
    return ca.agg_loss(pg + beta * ca.kl_k3(logp, ref), mask, mode, global_tokens=tok, global_seqs=seqs, norm_len=6)


@pytest.mark.parametrize("mode", sorted(AGG_TABLE))
def test_two_shards_equal_one_shard_loss_and_gradient(mode):
    g = torch.Generator().manual_seed(0)
    b, t = 5, 6
    lengths = [6, 1, 3, 2, 5]  # uneven: shard 1 = rows 0-1 (7 tokens), shard 2 = rows 2-4 (10 tokens)
    mask = torch.zeros(b, t, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    logp0 = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)  # some tokens beyond the clip edges
    tok, seqs = ca.global_counts(mask)

    full = logp0.clone().requires_grad_(True)
    loss_full = _grpo_loss_matrix(full, old, ref, adv, mask, mode, 0.04, tok, seqs)
    loss_full.backward()

    sharded = logp0.clone().requires_grad_(True)
    total = 0.0
    for rows, width in ((slice(0, 2), 6), (slice(2, 5), 5)):  # each shard padded to its own width
        total = total + _grpo_loss_matrix(
            sharded[rows, :width], old[rows, :width], ref[rows, :width], adv[rows], mask[rows, :width],
            mode, 0.04, tok, seqs,
        )
    total.backward()
    assert total.item() == pytest.approx(loss_full.item(), rel=1e-12)
    torch.testing.assert_close(sharded.grad, full.grad, rtol=1e-12, atol=1e-14)
    assert full.grad.abs().sum() > 0

    # control: normalising each shard by its OWN counts (and averaging shards, as DDP would) gives another loss
    local = sum(
        _grpo_loss_matrix(logp0[r, :w], old[r, :w], ref[r, :w], adv[r], mask[r, :w], mode, 0.04, None, None)
        for r, w in ((slice(0, 2), 6), (slice(2, 5), 5))
    ) / 2
    assert abs(local.item() - loss_full.item()) > 1e-3


# --------------------------------------------------------------------------------------------------------------
def test_zero_spread_filter():
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0]
    groups = ["a", "a", "a", "b", "b", "b", "c", "c"]
    keep, frac = ca.zero_spread_filter(rewards, groups)
    assert keep.tolist() == [False, False, False, True, True, True, False, False]
    assert frac == pytest.approx(2 / 3)
    # tolerance: spread 0.05 counts as zero with tol=0.1
    keep, frac = ca.zero_spread_filter([0.5, 0.55, 0.0, 1.0], [1, 1, 2, 2], tol=0.1)
    assert keep.tolist() == [False, False, True, True] and frac == 0.5
    keep, frac = ca.zero_spread_filter([], [])
    assert keep.numel() == 0 and frac == 0.0


def test_logprobs_and_entropy():
    # uniform over 4 tokens: log p = −log 4, H = log 4;  logits [0, log 3] → p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -math.inf, -math.inf]]])
    lp = ca.logprobs_from_logits(logits, torch.tensor([[2, 1]]))
    assert lp.tolist()[0] == pytest.approx([-math.log(4), math.log(0.75)])
    h = ca.entropy_from_logits(logits[:, :1])
    assert h.item() == pytest.approx(math.log(4))


# ------------------------------------------------------------------------------------ truncated importance sampling
# w = min(exp(prox − behav), cap); by hand: exp(0.5) = 1.648721, exp(−1) = 0.367879, exp(1) = 2.718 → cap 2.0
TIS_TABLE = [
    ([0.0, -1.0, 0.0], [-0.5, 0.0, -1.0], 2.0, [1.648721, 0.367879, 2.0]),
    ([0.0, 0.0], [0.0, 0.0], 1.5, [1.0, 1.0]),
    ([-2.0], [-1.0], 10.0, [0.367879]),
]


@pytest.mark.parametrize("prox, behav, cap, expected", TIS_TABLE)
def test_truncated_is_weights_table(prox, behav, cap, expected):
    w = ca.IS_CORRECTIONS["tis"](torch.tensor(prox), torch.tensor(behav), cap)
    assert w.tolist() == pytest.approx(expected, abs=1e-6)
    assert not w.requires_grad


def test_is_corrected_policy_loss_by_hand():
    logp, prox, behav, adv = torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[-1.0]]), torch.tensor([1.0])
    # 'none': ρ = exp(0 − (−1)) = e ≈ 2.718 vs the behaviour policy; A = 1 → max(−2.718, −1.28) = −1.28, clipped
    loss, clipped, w = ca.is_corrected_policy_loss("ppo_clip", "none", logp, behav, prox, adv, 0.2, 0.28, 2.0)
    assert loss.item() == pytest.approx(-1.28) and clipped.item() and w is None
    # 'tis': ρ = exp(0 − 0) = 1 vs the proximal policy → −1, times w = min(e, 2) = 2 → −2, not clipped
    loss, clipped, w = ca.is_corrected_policy_loss("ppo_clip", "tis", logp, behav, prox, adv, 0.2, 0.28, 2.0)
    assert loss.item() == pytest.approx(-2.0) and not clipped.item() and w.item() == pytest.approx(2.0)
    # without proximal log-probs there is nothing to correct with: the plain loss
    loss, _, w = ca.is_corrected_policy_loss("ppo_clip", "tis", logp, behav, None, adv, 0.2, 0.28, 2.0)
    assert loss.item() == pytest.approx(-1.28) and w is None


def test_unknown_is_correction_is_named():
    with pytest.raises(ValueError, match="unknown importance-sampling correction 'is'"):
        ca.IS_CORRECTIONS["is"]

