#!/usr/bin/env bash
# Creates .venv with the versions verified together (see docs/troubleshooting.md).
# Idempotent: re-running only installs what is missing. GPU=1 installs the GPU extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
GPU=${GPU:-0}

# System packages used by datagen's audio sources (TTS engines, recorded sounds, soundfont).
# chromium: the headless browser the run-page test (tests/polyaudio_rl/test_report.py) opens the page in.
APT_PKGS="espeak-ng flite fluid-soundfont-gm sound-theme-freedesktop hydrogen-drumkits libsndfile1 libfluidsynth3 oxygen-sounds yaru-theme-sound bucklespring-data chromium"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install -U pip==25.3 >/dev/null 2>&1 || true
if [ "$GPU" = 1 ]; then
  # CUDA torch comes with vllm's own pin on a GPU machine.
  $PIP install -e ".[gpu,dev]"
else
  # The CPU torch wheel first (lies on this machine's disk), so nothing pulls a multi-GB CUDA build.
  $PIP install "torch==2.13.0"
  $PIP install -e ".[cpu,dev]"
  # PyPI torchvision/torchaudio/torchcodec break imports against torch 2.13.0+cpu (see DESIGN notes).
  $VENV/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
$VENV/bin/python -c "import torch, vllm, transformers, peft, deepspeed, ray; print('[setup] ok: torch', torch.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
touch "$VENV/.stamp"
