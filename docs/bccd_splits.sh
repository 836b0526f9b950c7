#!/usr/bin/env bash
# BCCD's trainval / val / test splits (../shared/data/bccd_kitti/*.txt) as KITTI folders under RUNS_DIR/data:
# symlinks, so the dataset is read, never copied or written. Used by docs/detectnet_v2_bccd.sh and
# docs/yolo_v3_bccd.sh.
# Usage: bash docs/bccd_splits.sh RUNS_DIR   (never inside ../shared)
set -euo pipefail
DATA=${BCCD:-../shared/data/bccd_kitti}
RUNS=$1
for split in trainval val test; do
  mkdir -p "$RUNS/data/$split/images" "$RUNS/data/$split/labels"
  while read -r id; do
    ln -sf "$(realpath "$DATA/images/$id.jpg")" "$RUNS/data/$split/images/$id.jpg"
    ln -sf "$(realpath "$DATA/labels/$id.txt")" "$RUNS/data/$split/labels/$id.txt"
  done < "$DATA/$split.txt"
done
