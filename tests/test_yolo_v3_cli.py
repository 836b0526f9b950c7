"""yolo_v3 through the real `taoctl` command on a tiny generated KITTI set.

dataset_convert -> kmeans (its anchors go into the spec) -> train (with validation) -> evaluate
(model file and its ONNX agree) -> inference -> export (+ DeepStream config) -> prune -> retrain
from the pruned file; plus the errors a TAO user meets on the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

CLASSES = {"red": (220, 40, 40), "blue": (40, 60, 220)}
WIDTH, HEIGHT = 96, 64
IMAGES = 20


def _write_kitti(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        pixels = rng.integers(90, 150, size=(HEIGHT, WIDTH, 3)).astype(np.uint8)
        lines = []
        for k, (name, colour) in enumerate(CLASSES.items()):
            w, h = int(rng.integers(12, 30)), int(rng.integers(12, 30))
            x1 = int(rng.integers(0, WIDTH // 2 - w)) + k * WIDTH // 2
            y1 = int(rng.integers(0, HEIGHT - h))
            pixels[y1:y1 + h, x1:x1 + w] = colour
            lines.append(f"{name} 0.00 0 0.00 {x1} {y1} {x1 + w} {y1 + h} 0 0 0 0 0 0 0")
        Image.fromarray(pixels).save(root / "images" / f"{i:04d}.png")
        (root / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")


def _spec(root: Path, anchors: str, epochs: int, load_model: str = "") -> str:
    mapping = "\n".join(f'  target_class_mapping {{ key: "{c}" value: "{c}" }}' for c in CLASSES)
    return f'''random_seed: 7
yolov3_config {{
{anchors}
  arch: "resnet"
  nlayers: 10
  arch_conv_blocks: 0
  matching_neutral_box_iou: 0.7
  loss_loc_weight: 0.8
  loss_neg_obj_weights: 100.0
  loss_class_weights: 1.0
}}
training_config {{
  batch_size_per_gpu: 4
  num_epochs: {epochs}
  checkpoint_interval: 1
  learning_rate {{ soft_start_annealing_schedule {{ min_learning_rate: 1e-5 max_learning_rate: 2e-3
    soft_start: 0.1 annealing: 0.7 }} }}
  regularizer {{ type: L2 weight: 1e-5 }}
  optimizer {{ adam {{ epsilon: 1e-7 beta1: 0.9 beta2: 0.999 }} }}
{load_model}
}}
eval_config {{ average_precision_mode: SAMPLE batch_size: 8 matching_iou_threshold: 0.5 }}
nms_config {{ confidence_threshold: 0.001 clustering_iou_threshold: 0.5 top_k: 50 }}
augmentation_config {{ hue: 0.1 saturation: 1.5 exposure: 1.5 horizontal_flip: 0.5 jitter: 0.1
  output_width: {WIDTH} output_height: {HEIGHT} output_channel: 3 }}
dataset_config {{
  data_sources {{ tfrecords_path: "{root}/tfrecords/kitti*" image_directory_path: "{root}/kitti" }}
  image_extension: "png"
{mapping}
  validation_fold: 0
}}
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("yolo_v3")
    _write_kitti(root / "kitti", IMAGES)
    convert = root / "convert.txt"
    convert.write_text(f'''kitti_config {{ root_directory_path: "{root / 'kitti'}" image_dir_name: "images"
  label_dir_name: "labels" image_extension: ".png" partition_mode: "random" num_partitions: 2
  val_split: 25 num_shards: 2 }}
image_directory_path: "{root / 'kitti'}"
''')
    taoctl("yolo_v3", "dataset_convert", "-d", convert, "-o", root / "tfrecords" / "kitti", "-r", root / "convert",
           check=True)
    kmeans = taoctl("yolo_v3", "kmeans", "-l", root / "kitti" / "labels", "-i", root / "kitti" / "images",
                    "-x", str(WIDTH), "-y", str(HEIGHT), "--results_dir", root / "kmeans", check=True)
    anchors = (root / "kmeans" / "anchors.txt").read_text()
    spec = root / "spec.txt"
    spec.write_text(_spec(root, anchors, epochs=2))
    result = taoctl("yolo_v3", "train", "-e", spec, "-r", root / "train", check=True)
    return root, spec, result, kmeans


def test_kmeans_prints_the_three_spec_lines(trained):
    root, _, _, kmeans = trained
    assert "Please use following anchor sizes in YOLO config:" in kmeans.stdout
    assert f"{2 * IMAGES} boxes" in kmeans.stdout
    lines = (root / "kmeans" / "anchors.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["small_anchor_shape", "mid_anchor_shape", "big_anchor_shape"]
    for line in lines:
        assert line.split(": ", 1)[1].startswith('"[(') and line.count("(") == 3


def test_train_validates_and_keeps_the_best(trained):
    root, _, result, _ = trained
    rows = [json.loads(line) for line in (root / "train" / "status.json").read_text().splitlines()]
    assert rows[-1]["status"] == "SUCCESS"
    weights = root / "train" / "weights"
    assert (weights / "yolov3_resnet10_epoch_002.tlt").is_file()
    assert (weights / "yolov3_resnet10_epoch_best.tlt").is_file()
    assert "val_mAP" in result.stdout and "Classes (2): blue, red" in result.stdout


def test_evaluate_model_file_and_onnx_agree(trained, taoctl):
    root, spec, _, _ = trained
    model = root / "train" / "weights" / "yolov3_resnet10_epoch_002.tlt"
    first = taoctl("yolo_v3", "evaluate", "-e", spec, "-m", model, "-r", root / "eval", check=True)
    assert "mAP" in first.stdout and "blue          AP" in first.stdout
    export = taoctl("yolo_v3", "export", "-m", model, "-o", root / "export" / "model.onnx", "-e", spec,
                    "--gen_ds_config", check=True)
    assert "through taoctl's post-processing: num_detections" in export.stdout
    taoctl("yolo_v3", "evaluate", "-e", spec, "-m", root / "export" / "model.onnx", "-r", root / "eval_onnx",
           check=True)
    # tao-deploy's evaluate and inference read the same BatchedNMS outputs of the .onnx
    taoctl("deploy", "yolo_v3", "evaluate", "-e", spec, "-m", root / "export" / "model.onnx", "-r",
           root / "eval_deploy", check=True)
    taoctl("deploy", "yolo_v3", "inference", "-e", spec, "-m", root / "export" / "model.onnx", "-i",
           root / "kitti" / "images", "-r", root / "infer_deploy", "-t", "0.0", "-b", "4", check=True)
    assert len(list((root / "infer_deploy" / "labels").glob("*.txt"))) == IMAGES
    ours = json.loads((root / "eval" / "results.json").read_text())
    theirs = json.loads((root / "eval_onnx" / "results.json").read_text())
    deployed = json.loads((root / "eval_deploy" / "results.json").read_text())
    assert ours["num_images"] == 5 and ours["mAP"] == pytest.approx(theirs["mAP"], abs=1e-6)
    assert deployed["mAP"] == pytest.approx(theirs["mAP"], abs=1e-6)
    graph = onnx.load(root / "export" / "model.onnx").graph
    assert [o.name for o in graph.output] == ["num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes"]
    assert [d.dim_value for d in graph.output[1].type.tensor_type.shape.dim][1:] == [50, 4]  # nms_config.top_k
    config = (root / "export" / "nvinfer_config.txt").read_text()
    assert "network-type=0" in config and "cluster-mode=3" in config
    assert "output-blob-names=num_detections;nmsed_boxes;nmsed_scores;nmsed_classes" in config
    assert "parse-bbox-func-name=NvDsInferParseCustomBatchedNMSTLT" in config
    assert "pre-cluster-threshold=0.001" in config
    assert (root / "export" / "labels.txt").read_text().split() == ["blue", "red"]
    folder = taoctl("yolo_v3", "evaluate", "-e", spec, "-m", root / "export" / "model.onnx", "-r", root / "eval_dir",
                    "-i", root / "kitti" / "images", "-l", root / "kitti" / "labels", "-b", "4", check=True)
    assert "20 images of" in folder.stdout
    assert json.loads((root / "eval_dir" / "results.json").read_text())["num_images"] == IMAGES


def test_inference_writes_labels_with_confidences_and_annotated_images(trained, taoctl):
    root, spec, _, _ = trained
    out = root / "infer"
    taoctl("yolo_v3", "inference", "-e", spec, "-m", root / "train" / "weights" / "yolov3_resnet10_epoch_002.tlt",
           "-i", root / "kitti" / "images", "-r", out, "-t", "0.0", "-b", "4", check=True)
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(labels) == IMAGES and len(list((out / "images_annotated").iterdir())) == IMAGES
    fields = labels[0].read_text().splitlines()[0].split()
    assert fields[0] in CLASSES and len(fields) == 16  # KITTI plus the confidence
    assert 0.0 < float(fields[15]) <= 1.0


def test_prune_then_retrain_from_pruned_model_path(trained, taoctl):
    root, _, _, _ = trained
    model = root / "train" / "weights" / "yolov3_resnet10_epoch_002.tlt"
    pruned = root / "pruned.tlt"
    spec = root / "spec.txt"
    result = taoctl("yolo_v3", "prune", "-e", spec, "-m", model, "-o", pruned, "-pth", "0.7", "-nf", "8", check=True)
    assert "Pruned" in result.stdout
    anchors = (root / "kmeans" / "anchors.txt").read_text()
    unpruned = root / "retrain_unpruned.txt"
    unpruned.write_text(_spec(root, anchors, 1, f'  pruned_model_path: "{model}"'))
    refused = taoctl("yolo_v3", "train", "-e", unpruned, "-r", root / "retrain_refused")
    assert refused.returncode == 2 and "is not a pruned yolo_v3 model file" in refused.stderr
    assert "Traceback" not in refused.stderr
    retrain = root / "retrain.txt"
    retrain.write_text(_spec(root, anchors, 1, f'  pruned_model_path: "{pruned}"'))
    result = taoctl("yolo_v3", "train", "-e", retrain, "-r", root / "retrain", check=True)
    assert "0 missing" in result.stdout


def test_qat_trains_and_exports_int8_with_nms_and_no_calibration(trained, taoctl):
    root, _, _, _ = trained
    anchors = (root / "kmeans" / "anchors.txt").read_text()
    spec = root / "qat.txt"
    start = root / "train" / "weights" / "yolov3_resnet10_epoch_002.tlt"
    spec.write_text(_spec(root, anchors, 1, f'  pretrain_model_path: "{start}"').replace(
        "training_config {", "training_config {\n  enable_qat: true"))
    result = taoctl("yolo_v3", "train", "-e", spec, "-r", root / "qat", check=True)
    assert "Quantization-aware training:" in result.stdout
    out = root / "qat_export" / "model.onnx"
    result = taoctl("yolo_v3", "export", "-m", root / "qat" / "weights" / "yolov3_resnet10_epoch_001.tlt", "-e", spec,
                    "-o", out, "--data_type", "int8", check=True)
    assert "no calibration data" in result.stdout and "Calibrating" not in result.stdout
    graph = onnx.load(out).graph
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= {node.op_type for node in graph.node}
    assert [o.name for o in graph.output] == ["num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes"]
    evaluated = taoctl("yolo_v3", "evaluate", "-e", spec, "-m", out, "-r", root / "qat_eval", check=True)
    assert "blue          AP" in evaluated.stdout and "red           AP" in evaluated.stdout


def test_spec_errors_are_one_line(trained, taoctl, tmp_path):
    root, _, _, _ = trained
    anchors = (root / "kmeans" / "anchors.txt").read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text(_spec(root, anchors.replace("small_anchor_shape: \"[(", "small_anchor_shape: \"[(x"), 1))
    result = taoctl("yolo_v3", "train", "-e", bad, "-r", tmp_path / "out")
    assert result.returncode == 2 and "yolov3_config.small_anchor_shape" in result.stderr
    odd = tmp_path / "odd.txt"
    odd.write_text(_spec(root, anchors, 1).replace(f"output_height: {HEIGHT}", "output_height: 60"))
    result = taoctl("yolo_v3", "train", "-e", odd, "-r", tmp_path / "out_odd")
    assert result.returncode == 2 and "augmentation_config.output_height is 60" in result.stderr
