#!/usr/bin/env bash
# Training on a lent GPU machine (benchmarks/gpu/README.md): both models' impressions/s with
# trainer=gpu (bf16-mixed) through the torch-only sparse arch, next to the same machine's CPU in
# the same run; then each model trained STEPS batches on the GPU, exported and verified.
#
#   bash benchmarks/gpu/train.sh                              # on the GPU machine
#   TRAINER=cpu STEPS=5 EXTRA="..." bash benchmarks/gpu/train.sh   # what the CPU test runs
#
# Environment: TRAINER (gpu), STEPS (300), OUT (results folder: outputs/gpu), WORK (data, runs
# and package: outputs/gpu_work), DATA (a data folder: WORK/data; the embedded default's data is
# generated there on first use), EXTRA (more Hydra overrides for every run), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
TRAINER=${TRAINER:-gpu}
STEPS=${STEPS:-300}
OUT=${OUT:-outputs/gpu}
WORK=${WORK:-outputs/gpu_work}
DATA=${DATA:-$WORK/data}
read -r -a EXTRA <<< "${EXTRA:-}"
# packages the GPU image lacks travel as wheels in .whl (benchmarks/gpu/README.md)
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
step() { echo "[gpu/train.sh $(( $(date +%s) - START ))s] $*"; }

COMMON=("data.source.root=$DATA" "sparse_arch=torch" "${EXTRA[@]}")
step "throughput: $TRAINER, then cpu, $STEPS batches per model"
for trainer in $(printf '%s\n' "$TRAINER" cpu | uniq); do
  "$PY" benchmarks/train_throughput.py --models two_tower wide_deep --modes pipeline \
    --batches "$STEPS" --label "$trainer" --out "$OUT" --set "trainer=$trainer" "${COMMON[@]}"
done

RUNS=()
for model in two_tower wide_deep; do
  step "train $model on $TRAINER ($STEPS batches)"
  "$PY" -m pinrank.cli train "model=$model" "trainer=$TRAINER" "${COMMON[@]}" \
    "task_name=gpu_$model" "paths.log_dir=$WORK/runs" trainer.max_epochs=1 \
    "trainer.limit_train_batches=$STEPS" trainer.enable_progress_bar=false eval_oracle=false \
    > "$OUT/train_$model.log" 2>&1 || { tail -40 "$OUT/train_$model.log"; exit 1; }
  tail -4 "$OUT/train_$model.log"
  RUNS+=("$(ls -td "$WORK/runs/gpu_$model/runs"/*/ | head -1)")
done

step "export (unsigned) and verify against the training path"
"$PY" -m pinrank.cli export "run_dir=[${RUNS[0]%/},${RUNS[1]%/}]" "out=$WORK/package" \
  overwrite=true > "$OUT/export.log" 2>&1 || { tail -40 "$OUT/export.log"; exit 1; }
"$PY" -m pinrank.cli verify "$WORK/package" --allow-unsigned | tee "$OUT/verify.log"
step "done: $OUT"
