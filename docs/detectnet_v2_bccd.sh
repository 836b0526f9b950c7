#!/usr/bin/env bash
# The seed's DetectNet_v2 sequence on BCCD (../shared/data/bccd_kitti), on CPU:
#   dataset_convert -> train -> evaluate (test split) -> prune -> retrain -> export fp32 / int8 -> evaluate
#   -> train with enable_qat (from the retrained model) -> export int8 from its learned scales -> evaluate
# Usage: bash docs/detectnet_v2_bccd.sh [RUNS_DIR]   (default runs/bccd; never inside ../shared)
# Every command is what a TAO user types, with `tao` replaced by `taoctl`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${BCCD:-../shared/data/bccd_kitti}
RUNS=${1:-runs/bccd}
TAOCTL=${TAOCTL:-.venv/bin/taoctl}
export OMP_WAIT_POLICY=PASSIVE
PTH=${PTH:-0.62}  # 0.62: 45 % of the MACs (issue 13 asks <= 50 %); 0.6 left 51 %, 0.7 29 %

# 1. KITTI folders per split (symlinks: the dataset is read, never copied or written), then TFRecords.
BCCD=$DATA bash docs/bccd_splits.sh "$RUNS"
for split in trainval val test; do
  cat > "$RUNS/data/$split/convert.txt" <<SPEC
kitti_config {
  root_directory_path: "$RUNS/data/$split"
  image_dir_name: "images"
  label_dir_name: "labels"
  image_extension: ".jpg"
  partition_mode: "random"
  num_partitions: 2
  val_split: 0
  num_shards: 2
}
image_directory_path: "$RUNS/data/$split"
SPEC
  $TAOCTL detectnet_v2 dataset_convert -d "$RUNS/data/$split/convert.txt" -o "$RUNS/tfrecords/$split/$split" \
    -r "$RUNS/tfrecords/$split"
done

# 2. Train from ImageNet weights (specs/detectnet_v2/mobilenet_v2_bccd.txt reads $RUNS via overrides).
SPEC=specs/detectnet_v2/mobilenet_v2_bccd.txt
DATASET="dataset_config.data_sources.0.tfrecords_path=$RUNS/tfrecords/trainval/trainval*"
IMAGES="dataset_config.data_sources.0.image_directory_path=$RUNS/data/trainval"
VAL="dataset_config.validation_data_source.tfrecords_path=$RUNS/tfrecords/val/val*"
VALIMAGES="dataset_config.validation_data_source.image_directory_path=$RUNS/data/val"
$TAOCTL detectnet_v2 train -e $SPEC -r "$RUNS/train" "$DATASET" "$IMAGES" "$VAL" "$VALIMAGES"
MODEL=$(ls "$RUNS"/train/weights/model_[0-9]*.tlt | sort | tail -1)
TEST="-i $RUNS/data/test/images -l $RUNS/data/test/labels"

# 3. Evaluate on the test split.
$TAOCTL detectnet_v2 evaluate -e $SPEC -m "$MODEL" $TEST -r "$RUNS/evaluate"

# 4. Prune, retrain from the pruned model (load_graph), evaluate.
$TAOCTL detectnet_v2 prune -m "$MODEL" -o "$RUNS/pruned/model_pruned.tlt" -pth "$PTH" -eq union
$TAOCTL detectnet_v2 train -e specs/detectnet_v2/mobilenet_v2_bccd_retrain.txt -r "$RUNS/retrain" \
  "$DATASET" "$IMAGES" "$VAL" "$VALIMAGES" "model_config.pretrained_model_file=$RUNS/pruned/model_pruned.tlt"
RETRAINED=$(ls "$RUNS"/retrain/weights/model_[0-9]*.tlt | sort | tail -1)
$TAOCTL detectnet_v2 evaluate -e $SPEC -m "$RETRAINED" $TEST -r "$RUNS/evaluate_retrained"

# 5. Export fp32 and calibrated INT8 (calibration on training images), evaluate both on the test split.
#    160 calibration images (20 batches): with 80 the percentile ranges of one run cost 4 platelet AP points.
$TAOCTL detectnet_v2 export -m "$RETRAINED" -o "$RUNS/export/model.onnx" -e $SPEC --gen_ds_config "$DATASET" "$IMAGES"
$TAOCTL detectnet_v2 export -m "$RETRAINED" -o "$RUNS/export/model_int8.onnx" -e $SPEC --data_type int8 \
  --batches 20 --batch_size 8 --cal_image_dir "$RUNS/data/trainval/images" --gen_ds_config
for onnx in model model_int8; do
  $TAOCTL detectnet_v2 evaluate -e $SPEC -m "$RUNS/export/$onnx.onnx" $TEST -r "$RUNS/evaluate_$onnx"
done

# 6. QAT: a short fine-tune of the retrained model with enable_qat (fake INT8, lower learning rate),
#    then INT8 export from the scales it learned (no calibration data), evaluated on the test split.
$TAOCTL detectnet_v2 train -e specs/detectnet_v2/mobilenet_v2_bccd_retrain.txt -r "$RUNS/qat" \
  "$DATASET" "$IMAGES" "$VAL" "$VALIMAGES" "model_config.pretrained_model_file=$RETRAINED" \
  training_config.enable_qat=true training_config.num_epochs=4 training_config.checkpoint_interval=4 \
  training_config.learning_rate.soft_start_annealing_schedule.max_learning_rate=0.0001
QAT=$(ls "$RUNS"/qat/weights/model_[0-9]*.tlt | sort | tail -1)
$TAOCTL detectnet_v2 evaluate -e $SPEC -m "$QAT" $TEST -r "$RUNS/evaluate_qat"
$TAOCTL detectnet_v2 export -m "$QAT" -o "$RUNS/export/model_qat_int8.onnx" -e $SPEC --data_type int8
$TAOCTL detectnet_v2 evaluate -e $SPEC -m "$RUNS/export/model_qat_int8.onnx" $TEST -r "$RUNS/evaluate_model_qat_int8"
