#!/usr/bin/env bash
# Install nnU-Net v2 in its own virtual environment, benchmarks/.venv-nnunet (never in pdeseg's
# .venv: nnU-Net is not a pdeseg dependency), and put nnUNetTrainer_WallClock into it.
#
#   bash benchmarks/nnunet/install.sh                      # 'full': torch 2.14.1 + torchvision 0.29.1
#   NNUNET_TORCH=lean bash benchmarks/nnunet/install.sh    # 'lean': torch 2.13.0 CPU, as pdeseg's .venv
#   NNUNET_VENV=/elsewhere PYTHON=python3.11 bash benchmarks/nnunet/install.sh
#
# full  every nnU-Net trainer works; torch is a CUDA build (6.4 GB venv) that also runs on the CPU.
# lean  1.9 GB venv, CPU only, the same torch build as pdeseg's venv; PyPI's torchvision 0.28.0 comes
#       along (timm needs it) but its compiled ops do not load beside the CPU torch, so only the
#       trainers that nnU-Net finds before it imports its Primus trainers work: nnUNetTrainer and
#       nnUNetTrainer_WallClock (placed next to it). See README.md.
#
# Idempotent: a second run finds the pinned versions installed, skips pip, copies the trainer only
# if it changed, and runs the checks again. Switching NNUNET_TORCH reinstalls torch/torchvision in
# place. Every version is pinned by constraints-<mode>.txt (pip freeze of a working install).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${NNUNET_VENV:-$ROOT/benchmarks/.venv-nnunet}"
PYTHON="${PYTHON:-python3}"
MODE="${NNUNET_TORCH:-full}"

NNUNET_VERSION=2.8.1
case "$MODE" in
    full) TORCH_VERSION=2.14.1; TORCHVISION_VERSION=0.29.1 ;;
    lean) TORCH_VERSION=2.13.0; TORCHVISION_VERSION=0.28.0 ;;
    *) echo "NNUNET_TORCH must be 'full' or 'lean', not '$MODE'" >&2; exit 2 ;;
esac
CONSTRAINTS="$HERE/constraints-$MODE.txt"
TRAINER_SRC="$HERE/nnUNetTrainer_WallClock.py"

say() { printf '[nnunet-install] %s\n' "$*"; }
t0=$(date +%s)

# 1. the virtual environment -----------------------------------------------------------------
if [[ -x "$VENV/bin/python" ]]; then
    say "venv exists: $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    say "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "nnunetv2 2.8 needs Python >= 3.10"'

# 2. the packages ----------------------------------------------------------------------------
have() {  # exit 0 when the pinned versions are installed
    "$PY" - "$NNUNET_VERSION" "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(("nnunetv2", "torch", "torchvision"), sys.argv[1:]))
sys.exit(0 if all(version(k).split("+")[0] == v for k, v in want.items()) else 1)
EOF
}
if have; then
    say "$MODE: nnunetv2==$NNUNET_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION already installed, pip skipped"
else
    cflag=()
    [[ -f "$CONSTRAINTS" ]] && cflag=(-c "$CONSTRAINTS")
    say "$MODE: pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION nnunetv2==$NNUNET_VERSION" \
        "${cflag[*]:+-c ${CONSTRAINTS#"$ROOT"/}}"
    # pip's own lines, without its warnings about absent local index folders
    "$PY" -m pip install --disable-pip-version-check --no-input --progress-bar off "${cflag[@]}" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "nnunetv2==$NNUNET_VERSION" \
        2>&1 | grep --line-buffered -v -e "is ignored: it is neither a file nor a directory" \
                 -e "^Requirement already satisfied" -e "^Collecting " -e "^Processing " \
                 -e "Downloading " -e "Using cached " -e "^Looking in " || true
    have || { say "ERROR: the pinned versions are not installed (see pip's output above)"; exit 1; }
fi

# 3. the wall-clock trainer ------------------------------------------------------------------
# nnUNetv2_train -tr NAME (and nnUNetv2_predict, from the checkpoint's trainer_name) imports the
# modules of nnunetv2/training/nnUNetTrainer/ until one defines NAME: the top-level modules first,
# then the subpackages (primus/, variants/). A file next to nnUNetTrainer.py is found first.
PKG_DIR="$("$PY" -c 'import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))')"
TRAINER_DST="$PKG_DIR/training/nnUNetTrainer/nnUNetTrainer_WallClock.py"
if cmp -s "$TRAINER_SRC" "$TRAINER_DST"; then
    say "trainer up to date: $TRAINER_DST"
else
    cp "$TRAINER_SRC" "$TRAINER_DST"
    say "trainer copied: $TRAINER_DST"
fi

# 4. checks ----------------------------------------------------------------------------------
say "checking: imports, the trainer lookup, torchvision's compiled ops ($MODE)"
PYTHONWARNINGS=ignore "$PY" - "$MODE" <<'EOF'
import sys
import torch, nnunetv2
from importlib.metadata import version
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find_trainer

mode = sys.argv[1]
for name in ("nnUNetTrainer", "nnUNetTrainer_WallClock"):
    find_trainer(name)
try:
    find_trainer("nnUNetTrainer_5epochs")      # in variants/: the lookup imports primus/ -> timm -> torchvision
    variants = "work"
except RuntimeError as e:
    if mode == "full":
        raise
    variants = f"fail as expected in lean mode ({e})"
print(f"  nnunetv2 {version('nnunetv2')}, torch {torch.__version__}, torchvision {version('torchvision')}, "
      f"CUDA available: {torch.cuda.is_available()}")
print(f"  nnUNetTrainer, nnUNetTrainer_WallClock: found; trainers under variants/ and primus/: {variants}")
EOF
"$PY" -m pip check --disable-pip-version-check >/dev/null && say "pip check: no broken requirements" \
    || { say "WARNING: pip check reports problems:"; "$PY" -m pip check || true; }

say "done in $(( $(date +%s) - t0 )) s; $VENV is $(du -sh "$VENV" 2>/dev/null | cut -f1)"
say "commands: $VENV/bin/nnUNetv2_plan_and_preprocess, nnUNetv2_train, nnUNetv2_predict (see benchmarks/nnunet/README.md)"
