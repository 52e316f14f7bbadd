#!/usr/bin/env bash
# End-to-end check of benchmarks/.venv-nnunet on a pdeseg phantom, on the CPU: plan + preprocess
# (with --verify_dataset_integrity), a wall-clock-budget training of fold 0, prediction of the two
# imagesTs cases. About 3 minutes on 2 cores; the budget is NNUNET_WALLCLOCK_S (default 60 s).
#
#   bash benchmarks/nnunet/smoke_phantom.sh [WORK_DIR]          # default WORK_DIR: /tmp/nnunet-smoke
#
# Needs pdeseg's venv (.venv, for `pdeseg phantom`) and benchmarks/nnunet/install.sh run before.
# WORK_DIR is deleted and rebuilt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${NNUNET_VENV:-$ROOT/benchmarks/.venv-nnunet}"
WORK="${1:-/tmp/nnunet-smoke}"
CFG="${NNUNET_SMOKE_CONFIG:-3d_fullres}"
say() { printf '\n[nnunet-smoke] %s\n' "$*"; }

rm -rf "$WORK"
mkdir -p "$WORK"/{nnUNet_raw,nnUNet_preprocessed,nnUNet_results}
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"

say "phantom: 8 labelled MRI cases (+2 in imagesTs), nnU-Net v2 layout"
"$ROOT/.venv/bin/pdeseg" phantom --format msd --kind mri --layout nnunet --cases 8 \
    --out "$nnUNet_raw/Dataset999_Phantom"

say "plan and preprocess ($CFG)"
time "$VENV/bin/nnUNetv2_plan_and_preprocess" -d 999 --verify_dataset_integrity -c "$CFG" -np 2 -npfp 2

say "train fold 0 for NNUNET_WALLCLOCK_S=${NNUNET_WALLCLOCK_S:=60} s"
export NNUNET_WALLCLOCK_S
export NNUNET_ITERS_PER_EPOCH="${NNUNET_ITERS_PER_EPOCH:-10}" NNUNET_VAL_ITERS_PER_EPOCH="${NNUNET_VAL_ITERS_PER_EPOCH:-3}"
export NNUNET_SKIP_FINAL_VAL="${NNUNET_SKIP_FINAL_VAL:-1}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}" nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}"
time "$VENV/bin/nnUNetv2_train" 999 "$CFG" 0 -tr nnUNetTrainer_WallClock -device cpu
FOLD="$nnUNet_results/Dataset999_Phantom/nnUNetTrainer_WallClock__nnUNetPlans__$CFG/fold_0"
cat "$FOLD/wallclock.json"; echo

say "predict imagesTs (checkpoint_final.pth, no TTA)"
time "$VENV/bin/nnUNetv2_predict" -i "$nnUNet_raw/Dataset999_Phantom/imagesTs" -o "$WORK/pred" \
    -d 999 -c "$CFG" -f 0 -tr nnUNetTrainer_WallClock -chk checkpoint_final.pth --disable_tta \
    -device cpu -npp 1 -nps 1
ls -l "$WORK/pred"/*.nii.gz
say "ok: $FOLD, predictions in $WORK/pred"
