#!/usr/bin/env bash
# Graph-classification depth sweeps (experiment=depth_sweep): GIN and GCN, readouts mean / jk_cat /
# HISTOGRAPH, depth 2..64, holdout protocol, on PROTEINS and IMDB-BINARY.
#   scripts/depth_graph.sh            # full: 6 depths x 3 readouts x 10 folds x 2 models, 100 epochs
#   REDUCED=1 scripts/depth_graph.sh  # what results/depth/<dataset> ran on a 2-core CPU (README)
set -euo pipefail
source "$(dirname "$0")/env.sh"
DATASETS=${DATASETS:-"proteins imdb_binary"}

for ds in $DATASETS; do
  if [[ "${REDUCED:-0}" == "1" ]]; then
    sweep="depth_${ds}_reduced"
    $PY train.py -m experiment=depth_sweep sweep_name="$sweep" dataset="$ds" model=gin,gcn \
      model.layers=2,8,32,64 fold=0 trainer.max_epochs=${EPOCHS:-5} threads=1 \
      trainer.enable_progress_bar=false
  else
    sweep="depth_${ds}"
    $PY train.py -m experiment=depth_sweep sweep_name="$sweep" dataset="$ds" model=gin,gcn
  fi
  $PY -m histograph.analysis.plot "logs/sweeps/$sweep" --out "results/depth/$ds"
done
if [[ "${REDUCED:-0}" == "1" ]]; then
  # the second reduced sweep of results/depth: PROTEINS, plain GCN, folds 0-2, 10 epochs
  $PY train.py -m experiment=depth_sweep sweep_name=depth_proteins_gcn_3f10e dataset=proteins \
    model=gcn model.layers=2,8,32,64 fold=0,1,2 trainer.max_epochs=10 threads=1 \
    trainer.enable_progress_bar=false
  $PY -m histograph.analysis.plot logs/sweeps/depth_proteins_gcn_3f10e --out results/depth/proteins_gcn_3folds
fi
