#!/usr/bin/env bash
# Everything a lent GPU machine runs, in one script under 8 minutes (benchmarks/gpu/README.md):
# training (train.sh: throughput next to CPU, a package trained on the GPU and verified), then
# serving on that package (serving.py: ranker_pairs at batch 64k in float32 and bf16, exact
# top-k by matmul over 1M pins, each with parity against CPU). Results in OUT.
#
#   bash benchmarks/gpu/run.sh
#   TRAINER=cpu DEVICE=cpu STEPS=3 BATCH=2048 PINS=3000 EXTRA="..." bash benchmarks/gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-outputs/gpu} WORK=${WORK:-outputs/gpu_work}
export DATA=${DATA:-$WORK/data}
bash benchmarks/gpu/train.sh
export PYTHONPATH=${PYTHONPATH:-}
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"${PYTHON:-python3}" benchmarks/gpu/serving.py --package "$WORK/package" \
  --data "$DATA/prepared" --device "${DEVICE:-cuda}" --batch "${BATCH:-65536}" \
  --pins "${PINS:-1000000}" --out "$OUT"
