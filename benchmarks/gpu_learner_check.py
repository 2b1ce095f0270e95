"""GPU check of the learner path alone (no Ray, vLLM or DeepSpeed: the lent device image has none of them, and vLLM's
CUDA wheel is far over what a device call may carry): the tiny Qwen2-Audio + LoRA on CUDA in fp32 and bf16 —
sequence log-probs against fp32 on CPU, and one bf16 GRPO update that must move every completion's log-prob with its
advantage's sign (tests/polyaudio_rl/core/test_grpo_loss.py's direction test, on the GPU; its prompts and items come
from the test helpers). Prints and writes $OUT/bf16_check.json (default /tmp).

    PYTHONPATH=. python benchmarks/gpu_learner_check.py     # on a CUDA machine with torch, transformers, peft, soundfile

Seen 2026-12-04 on one H200 (torch 2.11.0+cu130, transformers 5.17, peft 0.21): benchmarks/results/gpu_learner_check.json.
"""
import json, os, sys, time
import torch
from polyaudio_rl.core.config import GRPOConfig, LoraConfig
from polyaudio_rl.core.batching import build_microbatches
from polyaudio_rl.core.grpo_loss import GlobalCounts, grpo_microbatch_loss
from polyaudio_rl.core.policy_forward import token_logprobs
from polyaudio_rl.core.model import add_lora, load_model, load_processor
from polyaudio_rl.core.tiny import write_tiny
from polyaudio_rl.core.prompts import build_prompt
from tests.conftest import make_sample
from tests.polyaudio_rl.core.test_grpo_loss import _items

out = os.environ.get("OUT", "/tmp")
res = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
import transformers, peft
res.update(transformers=transformers.__version__, peft=peft.__version__)
ck = str(write_tiny("/tmp/tiny-qwen2-audio", seed=0))
proc = load_processor(ck)
prompts = [build_prompt(make_sample("p-a", durations=(1.0, 0.5)), proc),
           build_prompt(make_sample("p-b", durations=(0.5, 1.5, 2.0), question="Which clip is longest?"), proc)]
items = _items(prompts, n_per=2, seed=1)

def seq_lp(model, mbs, dev, dt):
    with torch.no_grad():
        return torch.cat([(token_logprobs(model, mb.to(dev, dt))[0] * mb.to(dev, dt).mask).sum(-1).float().cpu() for mb in mbs])

lps = {}
for name, dev, dt in (("fp32_cpu", "cpu", torch.float32), ("fp32_cuda", "cuda", torch.float32), ("bf16_cuda", "cuda", torch.bfloat16)):
    torch.manual_seed(0)
    model = add_lora(load_model(ck).to(dev, dt), LoraConfig(rank=8, alpha=16, dropout=0.0))
    mbs = build_microbatches(items, proc, micro_batch_size=4)
    lps[name] = seq_lp(model, mbs, dev, dt)
    if name == "bf16_cuda":
        model.train()
        cfg = GRPOConfig(kl_coef=0.0, loss_agg="token-mean")
        mbs = [mb.to(dev, dt) for mb in mbs]
        for mb in mbs:
            with torch.no_grad():
                mb.old_logp = token_logprobs(model, mb)[0].float()
        before = seq_lp(model, mbs, dev, dt)
        tokens = int(sum(mb.mask.sum() for mb in mbs))
        counts = GlobalCounts(tokens=tokens, seqs=len(items), norm_len=8)
        params = [p for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        t0 = time.time()
        for mb in mbs:
            loss, _ = grpo_microbatch_loss(token_logprobs(model, mb)[0], mb, None, cfg, counts)
            loss.backward()
        torch.cuda.synchronize()
        res["bf16_fwd_bwd_s"] = time.time() - t0
        grad_sq = float(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None))
        lr = 0.2 / (tokens * grad_sq)  # moves sum A*dlogp by ~0.2 nats (bf16 needs a larger move than fp32's 0.05)
        torch.optim.SGD(params, lr=lr).step()
        delta = seq_lp(model, mbs, dev, dt) - before
        adv = torch.tensor([it.advantage for it in items])
        res["bf16_update"] = {"delta": delta.tolist(), "adv": adv.tolist(), "grad_sq": grad_sq,
                              "signs_follow_advantage": bool((torch.sign(delta) == torch.sign(adv)).all()),
                              "sum_A_dlogp": float((adv * delta).sum())}
res["logp"] = {k: v.tolist() for k, v in lps.items()}
res["max_abs_diff_fp32_cuda_vs_cpu"] = float((lps["fp32_cuda"] - lps["fp32_cpu"]).abs().max())
res["max_abs_diff_bf16_vs_fp32_cpu"] = float((lps["bf16_cuda"] - lps["fp32_cpu"]).abs().max())
print(json.dumps(res, indent=1))
json.dump(res, open(os.path.join(out, "bf16_check.json"), "w"), indent=1)
