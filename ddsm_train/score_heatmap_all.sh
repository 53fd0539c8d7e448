#!/usr/bin/env bash
# Sliding-window heatmaps of a patch classifier at 4096 px height, stride 128, for the
# train, val and test patients (the original's ddsm_train/score_heatmap_all.sh).
# Edit the paths below, or set them in the environment; flags after the script's name
# are passed on and override the ones below (the last one given wins).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"

PAT_CSV="${PAT_CSV:-CBIS-DDSM/Combined_full_ROI/pat_side_cancer.csv}"
IMG_FOLDER="${IMG_FOLDER:-CBIS-DDSM/Combined_full_ROI/full_img_png}"
DL_STATE="${DL_STATE:-CBIS-DDSM/Combined_patches_im4096_256_v3/keras2_3cls_best_model1.keras}"
PAT_DIR="${PAT_DIR:-CBIS-DDSM/Combined_full_ROI}"
OUT_DIR="${OUT_DIR:-CBIS-DDSM/Combined_patches_im4096_256_v3/keras2_3cls_model1_out}"
SETS="${SETS:-train val test}"
STRIDES="${STRIDES:-128}"

echo -n "Start: " && date
mkdir -p "$OUT_DIR"
for stride in $STRIDES; do
    echo ">>>> Stride=${stride} <<<<"
    for set in $SETS; do
        "$PYTHON" "$REPO/ddsm_train/heatmap_score.py" \
            --img-height 4096 \
            --img-scale 255.0 \
            --no-equalize-hist \
            --featurewise-center \
            --featurewise-mean 59.6 \
            --net resnet50 \
            --batch-size 64 \
            --patch-size 256 \
            --stride "$stride" \
            --pat-csv "$PAT_CSV" \
            --pat-list "$PAT_DIR/patient_${set}.txt" \
            --out "$OUT_DIR/phm_s${stride}_${set}.npz" \
            "$@" \
            "$IMG_FOLDER" "$DL_STATE"
    done
    echo ">>>> Done <<<<"
done
echo -n "End: " && date
