#!/usr/bin/env bash
# Does the default recipe (Adam lr 1e-3, docs/training.md) train every graph readout at depths
# 2, 8, 32 and 64 without collapsing to one class?  experiment=recipe_check: MUTAG, PROTEINS,
# IMDB-BINARY, NCI1 x GIN, GCN x depth 2/8/32/64 x 10 readouts, fold 0, 20 epochs; jk_lstm in its
# own, shallower sweep (a bi-LSTM over 33-65 history entries costs minutes per epoch here).
#   scripts/recipe_check.sh                       # all four datasets
#   DATASETS=mutag,proteins scripts/recipe_check.sh
# Tables and plots (with the collapsed count per cell): results/training/recipe_check*/
set -uo pipefail
source "$(dirname "$0")/env.sh"
JOBS=${JOBS:-2}
$PY train.py -m experiment=recipe_check ${DATASETS:+dataset=$DATASETS} \
  hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" || echo "(recipe_check: not every job finished; see its summary.md)"
$PY train.py -m experiment=recipe_check sweep_name=recipe_check_jk_lstm readout=jk_lstm \
  model.layers=2,8 ${DATASETS:+dataset=$DATASETS} hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" \
  || echo "(recipe_check_jk_lstm: not every job finished; see its summary.md)"
for sweep in recipe_check recipe_check_jk_lstm; do
  $PY -m histograph.analysis.plot "logs/sweeps/$sweep" --out "results/training/$sweep" --wandb off
done
