"""A learner step's metrics from two workers' sums (actors/learner_metrics.py): hand-computed global values."""
import pytest

from actors.learner_metrics import reduce_step
from polyaudio_rl.core.grpo_loss import GlobalCounts


def _worker(epochs, rss, gpu=0.0, cached=1, encoded=0, prep=0.5):
    return {"epochs": epochs, "time_s": 1.0, "peak_rss_mb": rss, "peak_gpu_mb": gpu, "prompts_cached": cached,
            "prompts_encoded": encoded, "prep_s": prep}


def _epoch(loss, pg, kl, clipped, ratio, rmax, ent, isw, grad=2.0, lr=1e-3):
    return {"loss": loss, "pg_loss_sum": pg, "kl_sum": kl, "clipped_tokens": clipped, "ratio_sum": ratio,
            "ratio_max": rmax, "tokens": 0.0, "entropy_sum": ent, "is_weight_sum": isw, "grad_norm": grad, "lr": lr}


def test_grpo_sums_over_workers_divided_by_the_global_tokens():
    # 10 tokens in all; two inner epochs; worker 0 and worker 1 report their shard's sums
    w0 = _worker([_epoch(0.25, 2.0, 0.4, 1.0, 6.0, 1.2, 3.0, 5.0), _epoch(0.2, 1.0, 0.5, 2.0, 6.5, 1.5, 3.0, 6.0,
                                                                           grad=1.0)], rss=100.0)
    w1 = _worker([_epoch(0.5, 3.0, 0.6, 1.0, 4.0, 1.1, 2.0, 5.0), _epoch(0.4, 2.0, 0.5, 0.0, 4.5, 1.3, 2.0, 4.0,
                                                                           grad=1.0)], rss=300.0, encoded=2, prep=0.7)
    m = reduce_step([w0, w1], GlobalCounts(tokens=10, seqs=4, norm_len=8), wall=2.0, step=3)
    assert m["loss"] == pytest.approx(0.75) and m["loss_last_epoch"] == pytest.approx(0.6)
    assert m["pg_loss"] == pytest.approx(0.5) and m["kl"] == pytest.approx(0.1) and m["entropy"] == pytest.approx(0.5)
    assert m["clip_frac"] == pytest.approx(4 / 20) and m["clip_frac_last_epoch"] == pytest.approx(0.2)
    assert m["ratio_mean"] == pytest.approx(21 / 20) and m["ratio_max"] == pytest.approx(1.5)
    assert m["is_weight_mean"] == pytest.approx(20 / 20)
    assert (m["grad_norm"], m["grad_norm_last_epoch"], m["lr"]) == (2.0, 1.0, 1e-3)
    assert (m["tokens"], m["sequences"], m["step"], m["time_s"]) == (10.0, 4.0, 3.0, 2.0)
    assert m["tokens_per_s"] == pytest.approx(10 * 2 / 2.0)
    assert (m["peak_rss_mb_max"], m["peak_rss_mb_w0"], m["peak_rss_mb_w1"]) == (300.0, 100.0, 300.0)
    assert (m["prompts_cached"], m["prompts_encoded"], m["prep_s_max"]) == (2.0, 2.0, 0.7)
    assert "peak_gpu_mb_w0" not in m and "nll" not in m  # on CPU no per-worker GPU peaks


def test_sft_reports_the_global_nll():
    ep = {"loss": 0.3, "nll_sum": 6.0, "tokens": 4.0, "grad_norm": 1.0, "lr": 2e-4}
    m = reduce_step([_worker([ep], 50.0, gpu=10.0), _worker([dict(ep, nll_sum=2.0)], 60.0, gpu=12.0)],
                    GlobalCounts(tokens=8, seqs=2, norm_len=8), wall=0.0, step=1)
    assert m["nll"] == pytest.approx(1.0) and m["loss"] == pytest.approx(0.6) and m["tokens_per_s"] == 0.0
    assert (m["peak_gpu_mb_max"], m["peak_gpu_mb_w0"], m["peak_gpu_mb_w1"]) == (12.0, 10.0, 12.0)
    assert "pg_loss" not in m
