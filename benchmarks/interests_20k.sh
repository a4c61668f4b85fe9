#!/usr/bin/env bash
# The interest model at 20,000 interests, end to end (benchmarks/README.md, new-user interests):
# data=synthetic_interests_20k (300,000 pins, 50,000 users), the interest model, short pin models
# on the same base data (the service needs them; an unknown user's interests do not), one signed
# package, then GET /v1/interests under load at 4, 8 and 16 concurrent clients.
#   bash benchmarks/interests_20k.sh            (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PINRANK=".venv/bin/pinrank"
PY=".venv/bin/python"
WORK="outputs/interests_20k"
PKG="outputs/packages/interests_20k"
BASE=(data=synthetic data.source.root=data/synthetic_20k data.source.generator.n_users=50000
      data.source.generator.n_items=300000 data.source.generator.n_events=2500000
      +data.source.generator.n_interests=20000 +data.source.generator.n_boards=40000
      +data.source.generator.n_creators=5000 eval_oracle=false trainer.max_epochs=1
      trainer.enable_progress_bar=false "paths.log_dir=$WORK")
latest() { ls -td "$WORK/$1/runs/"*/ | head -1; }
"$PINRANK" keygen --out outputs/keys --if-missing
if [ ! -d "$WORK/interests/runs" ]; then
  "$PINRANK" train task_name=interests model=interests data=synthetic_interests_20k \
      trainer.max_epochs=3 trainer.enable_progress_bar=false "paths.log_dir=$WORK"
fi
if [ ! -d "$WORK/pins_tt/runs" ]; then
  "$PINRANK" train task_name=pins_tt "${BASE[@]}" trainer.limit_train_batches=300 \
      model.module.index=exact +data.datamodule.eval_users=0.2
fi
if [ ! -d "$WORK/pins_wd/runs" ]; then
  "$PINRANK" train task_name=pins_wd model=wide_deep "${BASE[@]}" trainer.limit_train_batches=300 \
      model.module.logreg_grid=[]
fi
"$PINRANK" export "run_dir=[$(latest pins_tt),$(latest pins_wd),$(latest interests)]" \
    "out=$PKG" overwrite=true signing_key=outputs/keys/signing.key
for clients in 4 8 16; do
  "$PY" benchmarks/interests_serving.py --package "$PKG" --users data/synthetic_20k/raw/users \
      --clients "$clients" --seconds 30 --tag "20k_c$clients"
done
