"""The core: what every component shares, importing none of them (``actors rewards eval datagen`` are above it).

- :mod:`.config`     typed config dataclasses, YAML + dotted overrides
- :mod:`.schema`     the sample schema (Parquet rows ⇄ :class:`~.schema.Sample`), task names and key types
- :mod:`.audio`      decode, 16 kHz mono, validate; :mod:`.prompts` the multi-clip prompt builder
- :mod:`.model`      model + processor from a path (:mod:`.models`: the model families), LoRA; :mod:`.tiny` the offline tiny checkpoints
- :mod:`.weights`    hub naming, LoRA merge, adapter export, shape checks
- :mod:`.registry`   the one registry type; :mod:`.core_algos` GRPO math (advantages included)
- :mod:`.batching`   training items → micro-batches (:mod:`.packing`: shared prompts); :mod:`.policy_forward` the
  model's token log-probs on them; :mod:`.grpo_loss` the GRPO / SFT losses
- :mod:`.checkpoint`, :mod:`.atomic`, :mod:`.metrics`  checkpoints, atomic writes, metrics + plots
- :mod:`.judge_prompts`, :mod:`.openai_api`  the judge rubric texts, the OpenAI-compatible client and content builder
"""
