#!/usr/bin/env bash
# Finetune a whole-image model (trained on CBIS-DDSM) on INbreast at 1152x896: stage 2
# only (--nb-epoch 0). The script itself is where the original had it:
# ddsm_train/train_image_clf_inbreast.sh (edit the paths there); this name runs it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$REPO/ddsm_train/train_image_clf_inbreast.sh" "$@"
