#!/usr/bin/env bash
# Fair per-readout comparison (histograph/tune.py): every readout of configs/tune.yaml (mean, sum,
# attention, gmt, jk_cat, histograph) gets the same learning-rate grid {0.01, 0.003, 0.001}, chosen
# per outer fold on the inner validation split (nested CV, Errica et al. 2020); test read only at
# each readout's own winner. Tables: results/tune/<name>/comparison.md (+ one summary.md per readout).
#
# What results/README.md section 0 ran (job time on one thread: 24, 30 (17 at 50 epochs), 31 min):
#   DATASET=mutag EPOCHS=100 NAME=mutag_lr_e100 scripts/reproduce_tune.sh
#   DATASET=ptc_mr EPOCHS=100 NAME=ptc_mr_lr_e100 scripts/reproduce_tune.sh   # also EPOCHS=50
#   DATASET=proteins EPOCHS=50 OUTER_FOLDS='[0,1,2]' NAME=proteins_lr_f0-2_e50 scripts/reproduce_tune.sh
#   DATASET=proteins EPOCHS=100 OUTER_FOLDS='[0,1,2]' NAME=proteins_lr_f0-2_e100 scripts/reproduce_tune.sh  # code 03fcceb, 2,912 s
#   DATASET=proteins EPOCHS=100 OUTER_FOLDS='[0,1,2,3,4,5]' NAME=proteins_lr_f0-5_e100 scripts/reproduce_tune.sh  # 6,085 s in all
#   DATASET=proteins EPOCHS=100 OUTER_FOLDS='[0,1,2,3,4,5,6,7,8,9]' NAME=proteins_lr_f0-9_e100 scripts/reproduce_tune.sh  # 10,619 s in all
#   DATASET=proteins EPOCHS=150 OUTER_FOLDS='[0,1,2,3,4,5,6,7,8,9]' NAME=proteins_lr_f0-9_e150 RUN_DIR=logs/tune/proteins_lr_f0-9_e100 EXTRA=resume=force scripts/reproduce_tune.sh  # code 625a743: +50 epochs in place, 5,764 s
# What section 0b ran (code 67e8266; job time 3,852 s, 1,859 s (897 s at 50), 2,306 s (1,001 s at 50)):
#   DATASET=nci1 EPOCHS=50 OUTER_FOLDS='[0,1,2]' NAME=nci1_lr_f0-2_e50 scripts/reproduce_tune.sh
#   DATASET=nci1 EPOCHS=100 OUTER_FOLDS='[0,1,2]' NAME=nci1_lr_f0-2_e100 scripts/reproduce_tune.sh  # code c95d4dc, 56 min wall
#   DATASET=nci1 EPOCHS=150 OUTER_FOLDS='[0,1,2]' NAME=nci1_lr_f0-2_e150 scripts/reproduce_tune.sh  # code 03fcceb, 11,019 s, 95 min wall
#   DATASET=nci1 EPOCHS=250 OUTER_FOLDS='[0,1,2]' NAME=nci1_lr_f0-2_e250 RUN_DIR=logs/tune/nci1_lr_f0-2_e150 EXTRA=resume=force scripts/reproduce_tune.sh  # code 44c312e: continues the 150-epoch jobs to 250 (exactly a fresh 250-epoch run; +100 epochs of job time only)
#   DATASET=imdb_binary EPOCHS=100 OUTER_FOLDS='[0,1,2]' NAME=imdb_binary_lr_f0-2_e100 scripts/reproduce_tune.sh
#   DATASET=imdb_multi EPOCHS=100 OUTER_FOLDS='[0,1,2]' NAME=imdb_multi_lr_f0-2_e100 scripts/reproduce_tune.sh
# Two processes on one run dir split the work (what ran there): EXTRA="tune.readouts=[mean,sum,gmt]"
# in one, "tune.readouts=[attention,jk_cat,histograph]" in the other; their job folders are
# disjoint, but each writes the run dir's comparison.md (its own readouts only) and .hydra/, so
# finish with the plain command: it reuses every finished job and writes the whole comparison.
# Issue-12 setting, one dataset per call (10 outer folds below 1,000 graphs, 3 above):
#   for d in mutag ptc_mr; do DATASET=$d EPOCHS=100 scripts/reproduce_tune.sh; done
#   DATASET=proteins EPOCHS=150 OUTER_FOLDS='[0,1,2,3,4,5,6,7,8,9]' scripts/reproduce_tune.sh  # all 10 folds; late selection at chance from 150
#   for d in imdb_binary imdb_multi; do DATASET=$d EPOCHS=100 OUTER_FOLDS='[0,1,2]' scripts/reproduce_tune.sh; done
#   DATASET=nci1 EPOCHS=250 OUTER_FOLDS='[0,1,2]' scripts/reproduce_tune.sh  # NCI1 selects late below 250
set -euo pipefail
source "$(dirname "$0")/env.sh"
DATASET=${DATASET:-mutag}
EPOCHS=${EPOCHS:-100}
OUTER_FOLDS=${OUTER_FOLDS:-null}
NAME=${NAME:-${DATASET}_lr_e${EPOCHS}}
RUN_DIR=${RUN_DIR:-logs/tune/$NAME}
OUT_DIR=${OUT_DIR:-results/tune/$NAME}

"$PY" -m histograph.tune "dataset=$DATASET" "trainer.max_epochs=$EPOCHS" \
  "protocol.outer_folds=$OUTER_FOLDS" threads=1 "hydra.run.dir=$RUN_DIR" ${EXTRA:-}
mkdir -p "$OUT_DIR"
cp "$RUN_DIR/comparison.md" "$RUN_DIR/comparison.json" "$OUT_DIR/"
for run in "$RUN_DIR"/readout=*; do
  mkdir -p "$OUT_DIR/$(basename "$run")"
  cp "$run/summary.md" "$run/nested.json" "$OUT_DIR/$(basename "$run")/"
done
