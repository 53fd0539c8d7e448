#!/usr/bin/env bash
# fprop heatmaps (one forward pass of the all-convolutional patch classifier) for the
# train, val and test patients (the original's ddsm_train/fprop_heatmap_all.sh).
# Edit the paths below, or set them in the environment; flags after the script's name
# are passed on and override the ones below (the last one given wins).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"

PAT_CSV="${PAT_CSV:-CBIS-DDSM/Combined_full_ROI/pat_side_cancer.csv}"
IMG_FOLDER="${IMG_FOLDER:-CBIS-DDSM/Combined_full_ROI/full_img_png}"
DL_STATE="${DL_STATE:-CBIS-DDSM/Combined_patches_im1152_224_s10/resnet_prt_best1.keras}"
PAT_DIR="${PAT_DIR:-CBIS-DDSM/Combined_full_ROI}"
OUT_DIR="${OUT_DIR:-CBIS-DDSM/Combined_patches_im1152_224_s10/resnet_prt_best1_out}"
SETS="${SETS:-train val test}"

echo -n "Start: " && date
mkdir -p "$OUT_DIR"
for set in $SETS; do
    # 255/65535 = 0.003891.
    "$PYTHON" "$REPO/ddsm_train/heatmap_score.py" \
        --fprop-mode \
        --img-size 1152 896 \
        --no-img-height \
        --no-img-scale \
        --rescale-factor 0.003891 \
        --no-equalize-hist \
        --featurewise-center \
        --featurewise-mean 52.18 \
        --avg-pool-size 7 7 \
        --hm-strides 1 1 \
        --net resnet50 \
        --pat-csv "$PAT_CSV" \
        --pat-list "$PAT_DIR/patient_${set}.txt" \
        --out "$OUT_DIR/phm_s1x1_${set}.npz" \
        "$@" \
        "$IMG_FOLDER" "$DL_STATE"
done
echo -n "End: " && date
