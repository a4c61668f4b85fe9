#!/usr/bin/env bash
# One-command install (make setup): .venv with pinned versions that import together.
# Idempotent: a stamp keyed on the requirement files and pyproject skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
key=$(cat requirements/*.txt pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.pinrank-setup-$flavour-$key"
if [ -f "$stamp" ]; then echo "setup: up to date ($flavour, $key)"; exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if [ "$flavour" = gpu ]; then
  # CUDA builds replace the CPU ones of the same libraries; the rest of the pins stay, faiss-cpu
  # included (no faiss GPU wheel pairs with torch's CUDA 13.0: requirements/gpu.txt, docs/gpu.md).
  grep -v -E '^(torch|fbgemm-gpu-cpu|onnxruntime)==' requirements/cpu.txt > "$VENV/req-gpu-rest.txt"
  pip install -r requirements/gpu.txt -r "$VENV/req-gpu-rest.txt"
else
  pip install -r requirements/cpu.txt
fi
pip install --no-deps -r requirements/torchrec.txt
pip install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, torchrec, faiss, onnxruntime, pyarrow, pytorch_lightning, hydra; print('setup: torch', torch.__version__, '| torchrec', torchrec.__version__, '| faiss', faiss.__version__, '| onnxruntime', onnxruntime.__version__, '| cuda', torch.cuda.is_available())"
rm -f "$VENV"/.pinrank-setup-*
touch "$stamp"
