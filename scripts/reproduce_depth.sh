#!/usr/bin/env bash
# Issue 12's depth study at the default recipe (Adam 1e-3): does a readout over the whole history
# keep a deep, plain (no residual) stack usable? GIN and GCN at depths 2/8/32/64, readouts mean /
# jk_cat / histograph, holdout protocol (epoch selected on validation), folds 0-2
# (experiment=depth_sweep). Tables and plots: results/depth/<dataset>_recipe/.
#   scripts/reproduce_depth.sh                    # PROTEINS and NCI1, 40 epochs
#   DATASETS=proteins scripts/reproduce_depth.sh  # what results/depth/proteins_recipe ran here
#   RESIDUAL=pre scripts/reproduce_depth.sh       # the same with model.residual=pre: its own sweep
#                                                 # folder and results/depth/<dataset>_pre/
#   RESIDUAL=pre DATASETS=nci1 EPOCHS=80 FOLDS=0 LAYERS=32,8 READOUTS=mean,histograph \
#     scripts/reproduce_depth.sh                  # results/depth/nci1_pre_e80 (other than 40
#                                                 # epochs: _e<N> on the sweep and the output)
# Re-running skips finished jobs (sweep folders keyed by their settings); EXTRA adds overrides,
# e.g. EXTRA="hydra/launcher=slurm" on a cluster or EXTRA="trainer.accelerator=gpu".
set -euo pipefail
source "$(dirname "$0")/env.sh"
DATASETS=${DATASETS:-"proteins nci1"}
EPOCHS=${EPOCHS:-40}
FOLDS=${FOLDS:-0,1,2}
LAYERS=${LAYERS:-64,32,8,2}
READOUTS=${READOUTS:-mean,jk_cat,histograph}
RESIDUAL=${RESIDUAL:-}  # empty: the backbone config's own (plain); pre / true: that residual

for ds in $DATASETS; do
  if [ -n "$RESIDUAL" ]; then
    # A separate sweep folder, so the plain study's tables never mix in these runs.
    sweep="depth_${ds}_${RESIDUAL}_e${EPOCHS}" out="results/depth/${ds}_${RESIDUAL}"
    residual=("model.residual=$RESIDUAL")
  else
    sweep="depth_${ds}_e${EPOCHS}" out="results/depth/${ds}_recipe" residual=()
  fi
  [ "$EPOCHS" = 40 ] || out="${out}_e${EPOCHS}"  # never overwrite the 40-epoch tables
  "$PY" train.py -m experiment=depth_sweep sweep_name="$sweep" dataset="$ds" model=gin,gcn \
    "model.layers=$LAYERS" "readout=$READOUTS" "fold=$FOLDS" \
    "trainer.max_epochs=$EPOCHS" threads=1 trainer.enable_progress_bar=false "${residual[@]}" ${EXTRA:-}
  "$PY" -m histograph.analysis.plot "logs/sweeps/$sweep" --out "$out"
done
