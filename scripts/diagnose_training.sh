#!/usr/bin/env bash
# Regenerates results/training/diagnosis/ (docs/training.md): per-step records + figures, the
# screened fixes, the readout sweep. One training process at a time, one thread. Costs measured
# on a shared 2-core machine (single-core minutes): diagnosis ~12, screen ~30, readouts ~22.
#   bash scripts/diagnose_training.sh [diagnosis|screen|readouts|residual|report]...   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
export HISTOGRAPH_DATA_MIRROR="${HISTOGRAPH_DATA_MIRROR:-../shared/data}"
PY="${PY:-.venv/bin/python}"
S=scripts/diagnose_training.py
D=results/training/diagnosis
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(diagnosis screen readouts residual report)
for part in "${parts[@]}"; do case "$part" in
diagnosis)  # per-step records
  $PY $S --epochs 6 --run nci1_gin4_hg:lr0.01 nci1_gin4_hg:lr0.001 nci1_gin4_hg:lr0.01,nolayer \
    nci1_gin4_mean:lr0.01 proteins_gcn32_hg:lr0.01 proteins_gcn32_hg:lr0.001 \
    proteins_gcn32_mean:lr0.01 proteins_gcn32_mean:lr0.001
  $PY $S --epochs 10 --run proteins_gin2_jk_max:lr0.01 proteins_gin2_gmt:lr0.01 \
    proteins_gin2_jk_max:lr0.001 ;;
screen)  # candidate fixes, per-epoch records only
  $PY $S --no-steps --epochs 10 --out $D/screen --run nci1_gin4_hg:lr0.01 nci1_gin4_hg:lr0.001 \
    nci1_gin4_hg:lr0.01,warmup5 nci1_gin4_hg:lr0.01,rolr0.001 nci1_gin4_hg:lr0.01,rhlr0.001 \
    nci1_gin4_hg:lr0.01,hdlr0.001 nci1_gin4_hg:lr0.01,clip1.0 nci1_gin4_hg:lr0.01,qknorm \
    nci1_gin4_hg:lr0.01,gbn nci1_gin4_hg:lr0.001,gbn nci1_gin4_hg:lr0.01,nolayer \
    nci1_gin4_hg:lr0.01,nonode nci1_gin4_mean:lr0.01 nci1_gin4_mean:lr0.001 \
    proteins_gcn32_hg:lr0.01 proteins_gcn32_hg:lr0.001 proteins_gcn32_hg:lr0.01,warmup5 \
    proteins_gcn32_hg:lr0.01,rhlr0.001 proteins_gcn32_hg:lr0.01,qknorm \
    mutag_gin4_hg:lr0.01 mutag_gin4_hg:lr0.001 mutag_gin4_hg:lr0.01,rhlr0.001 \
    imdbb_gin4_hg:lr0.01 imdbb_gin4_hg:lr0.001 imdbb_gin4_hg:lr0.01,rhlr0.001 ;;
readouts)  # every readout, PROTEINS fold 0, lr 0.01 vs 0.001
  RO="mean sum max attention set2set gmt jk_cat jk_max jk_lstm histograph"
  runs=(); for c in gin gcn; do for r in $RO; do for lr in 0.01 0.001; do
    runs+=("proteins_${c}2_${r}:lr$lr"); done; done; done
  $PY $S --no-steps --skip-train-eval --epochs 10 --out $D/readouts --run "${runs[@]}"
  # depth 32 (GCN only, 5 epochs; jk_lstm left out: > 3 min per epoch here; histograph: the
  # 10-epoch proteins_gcn32_hg runs of the screen)
  runs=(); for r in mean sum max attention set2set gmt jk_cat jk_max; do for lr in 0.01 0.001; do
    runs+=("proteins_gcn32_${r}:lr$lr"); done; done
  $PY $S --no-steps --skip-train-eval --epochs 5 --out $D/readouts --run "${runs[@]}" ;;
residual)  # JK-cat over 64 plain vs post- vs pre-activation residual layers (MUTAG, 4 epochs, ~1.5 min)
  $PY $S --epochs 4 --out $D/residual --run mutag_gin64_jk_cat:lr0.001 \
    mutag_gin64_jk_cat:lr0.001,res mutag_gin64_jk_cat:lr0.001,pre mutag_gcn64_jk_cat:lr0.001 \
    mutag_gcn64_jk_cat:lr0.001,res mutag_gcn64_jk_cat:lr0.001,pre
  $PY $S --table "" --out $D/residual
  for r in mutag_gin64_jk_cat__lr0.001 mutag_gcn64_jk_cat__lr0.001; do for v in "" _res _pre; do
    $PY $S --out $D/residual --show "$r$v" --at 0,10 \
      --cols loss,g_norm_mean,hist_norm_last,head_dead_units; done; done ;;
report)  # figures and tables (no training)
  $PY $S --plot --figure $D/diagnosis.png
  $PY $S --plot --figure $D/diagnosis_contrast.png --pairs \
    nci1_gin4_mean__lr0.01/nci1_gin4_hg__lr0.01_nolayer \
    proteins_gin2_jk_max__lr0.01/proteins_gin2_jk_max__lr0.001
  $PY $S --table "" --out $D/screen
  $PY $S --table "" --out $D/readouts
  $PY $S --thresholds $D/screen $D/readouts $D
  $PY $S --show nci1_gin4_hg__lr0.01 nci1_gin4_hg__lr0.001 ;;
*) echo "unknown part $part" >&2; exit 2 ;;
esac; done
