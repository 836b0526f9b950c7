#!/usr/bin/env bash
# The seed's YOLOv3 sequence on BCCD (../shared/data/bccd_kitti), on CPU:
#   kmeans -> train -> evaluate (test split) -> prune -> retrain -> export fp32 / int8 -> evaluate
#   -> train with enable_qat (from the retrained model) -> export int8 from its learned scales -> evaluate
# Usage: bash docs/yolo_v3_bccd.sh [RUNS_DIR]   (default runs/bccd_yolo; never inside ../shared)
# Every command is what a TAO user types, with `tao` replaced by `taoctl`. yolo_v3 reads the KITTI
# folders directly (dataset_config's label/image_directory_path), so there is no dataset_convert step.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BCCD:-../shared/data/bccd_kitti}
RUNS=${1:-runs/bccd_yolo}
TAOCTL=${TAOCTL:-.venv/bin/taoctl}
export OMP_WAIT_POLICY=PASSIVE
PTH=${PTH:-0.8}  # 0.8: 46 % of the MACs (README: 0.85 and 0.9 too)
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-20}

# 1. KITTI folders per split (symlinks), and the anchors the spec holds, from the training boxes.
BCCD=$DATA bash docs/bccd_splits.sh "$RUNS"
$TAOCTL yolo_v3 kmeans -l "$RUNS/data/trainval/labels" -i "$RUNS/data/trainval/images" -x 416 -y 320 \
  --results_dir "$RUNS/kmeans"

# 2. Train from ImageNet weights (specs/yolo_v3/mobilenet_v2_bccd.txt; its data paths set to $RUNS).
SPEC=specs/yolo_v3/mobilenet_v2_bccd.txt
DATASET=("dataset_config.data_sources.0.label_directory_path=$RUNS/data/trainval/labels"
         "dataset_config.data_sources.0.image_directory_path=$RUNS/data/trainval/images"
         "dataset_config.validation_data_sources.0.label_directory_path=$RUNS/data/val/labels"
         "dataset_config.validation_data_sources.0.image_directory_path=$RUNS/data/val/images")
$TAOCTL yolo_v3 train -e $SPEC -r "$RUNS/train" "${DATASET[@]}"
MODEL=$(ls "$RUNS"/train/weights/yolov3_mobilenet_v2_epoch_[0-9]*.tlt | sort | tail -1)
TEST=(-i "$RUNS/data/test/images" -l "$RUNS/data/test/labels")

# 3. Evaluate on the test split.
$TAOCTL yolo_v3 evaluate -e $SPEC -m "$MODEL" "${TEST[@]}" -r "$RUNS/evaluate"

# 4. Prune, evaluate the pruned model as it is, retrain it (pruned_model_path), evaluate.
$TAOCTL yolo_v3 prune -e $SPEC -m "$MODEL" -o "$RUNS/pruned/model_pruned.tlt" -pth "$PTH" -eq union
$TAOCTL yolo_v3 evaluate -e $SPEC -m "$RUNS/pruned/model_pruned.tlt" "${TEST[@]}" -r "$RUNS/evaluate_pruned"
$TAOCTL yolo_v3 train -e $SPEC -r "$RUNS/retrain" "${DATASET[@]}" \
  "training_config.pruned_model_path=$RUNS/pruned/model_pruned.tlt" "training_config.num_epochs=$RETRAIN_EPOCHS"
RETRAINED=$(ls "$RUNS"/retrain/weights/yolov3_mobilenet_v2_epoch_[0-9]*.tlt | sort | tail -1)
$TAOCTL yolo_v3 evaluate -e $SPEC -m "$RETRAINED" "${TEST[@]}" -r "$RUNS/evaluate_retrained"

# 5. Export fp32 and calibrated INT8 (calibration on training images), both with TAO's BatchedNMS
#    outputs; evaluate both on the test split.
$TAOCTL yolo_v3 export -m "$RETRAINED" -o "$RUNS/export/model.onnx" -e $SPEC --gen_ds_config
$TAOCTL yolo_v3 export -m "$RETRAINED" -o "$RUNS/export/model_int8.onnx" -e $SPEC --data_type int8 \
  --batches 10 --batch_size 8 --cal_image_dir "$RUNS/data/trainval/images" --gen_ds_config
for onnx in model model_int8; do
  $TAOCTL yolo_v3 evaluate -e $SPEC -m "$RUNS/export/$onnx.onnx" "${TEST[@]}" -r "$RUNS/evaluate_$onnx"
done

# 6. QAT: a short fine-tune of the retrained model with enable_qat (fake INT8, lower learning rate),
#    then INT8 export from the scales it learned (no calibration data), evaluated on the test split.
$TAOCTL yolo_v3 train -e $SPEC -r "$RUNS/qat" "${DATASET[@]}" "training_config.pretrain_model_path=$RETRAINED" \
  training_config.enable_qat=true training_config.num_epochs=4 training_config.checkpoint_interval=4 \
  training_config.learning_rate.soft_start_cosine_annealing_schedule.max_learning_rate=0.0001
QAT=$(ls "$RUNS"/qat/weights/yolov3_mobilenet_v2_epoch_[0-9]*.tlt | sort | tail -1)
$TAOCTL yolo_v3 evaluate -e $SPEC -m "$QAT" "${TEST[@]}" -r "$RUNS/evaluate_qat"
$TAOCTL yolo_v3 export -m "$QAT" -o "$RUNS/export/model_qat_int8.onnx" -e $SPEC --data_type int8
$TAOCTL yolo_v3 evaluate -e $SPEC -m "$RUNS/export/model_qat_int8.onnx" "${TEST[@]}" -r "$RUNS/evaluate_model_qat_int8"
