#!/usr/bin/env bash
# Node-classification depth study (HISTOGRAPH paper, Planetoid table): GCN of depth 2..64, last-layer
# classifier vs HISTOGRAPH's layer-wise stage per node, public split, best-validation epoch.
#   scripts/depth_node.sh            # the full study: 3 datasets x 6 depths x 2 readouts x 10 seeds
#   REDUCED=1 scripts/depth_node.sh  # what results/depth/node ran on a 2-core CPU (see its README)
# Tables and plots go to results/depth/node/ (python -m histograph.analysis.plot --out ...).
set -euo pipefail
source "$(dirname "$0")/env.sh"
SWEEP=${SWEEP:-node_depth}
OUT=${OUT:-results/depth/node}

if [[ "${REDUCED:-0}" == "1" ]]; then
  # the paper's depths 2/8/32/64; Cora and CiteSeer with seeds 0-4 (two jobs at a time through
  # the joblib launcher), PubMed at depths 2 and 8 with seed 0 only (its depth-64 GCN costs ~10 s
  # per epoch on one CPU core)
  $PY train.py -m experiment=node_depth sweep_name="$SWEEP" dataset=cora,citeseer \
    model.layers=2,8,32,64 'seed=range(0,5)' hydra/launcher=joblib hydra.launcher.n_jobs=2
  $PY train.py -m experiment=node_depth sweep_name="$SWEEP" dataset=pubmed model.layers=2,8 seed=0
else
  $PY train.py -m experiment=node_depth sweep_name="$SWEEP"
fi
$PY -m histograph.analysis.plot "logs/sweeps/$SWEEP" --out "$OUT"
