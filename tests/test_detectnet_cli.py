"""detectnet_v2 through the real `taoctl` command: the seed's sequence on a tiny generated KITTI set.

dataset_convert -> train (with validation) -> evaluate (model file and its ONNX agree) ->
inference -> prune -> retrain from the pruned file (load_graph) -> export (fp32 + DeepStream
config, int8) -> calibration_tensorfile; plus the errors a TAO user meets on the way.
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


def _write_kitti(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        pixels = rng.integers(90, 150, size=(HEIGHT, WIDTH, 3)).astype(np.uint8)
        lines = []
        for k, (name, colour) in enumerate(CLASSES.items()):
            side = int(rng.integers(14, 24))
            x1 = int(rng.integers(0, WIDTH // 2 - side)) + k * WIDTH // 2
            y1 = int(rng.integers(0, HEIGHT - side))
            pixels[y1:y1 + side, x1:x1 + side] = colour
            lines.append(f"{name} 0.00 0 0.00 {x1} {y1} {x1 + side} {y1 + side} 0 0 0 0 0 0 0")
        Image.fromarray(pixels).save(root / "images" / f"{i:04d}.png")
        (root / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")


def _spec(data: Path, tfrecords: str, epochs: int, extra_model: str = "") -> str:
    per_class = "\n".join(
        f'''  target_class_mapping {{ key: "{c}" value: "{c}" }}''' for c in CLASSES)
    clustering = "\n".join(f'''  target_class_config {{ key: "{c}" value {{ clustering_config {{
    clustering_algorithm: NMS coverage_threshold: 0.05 nms_iou_threshold: 0.5 minimum_bounding_box_height: 2 }} }} }}'''
                           for c in CLASSES)
    targets = "\n".join(f'''  target_classes {{ name: "{c}" class_weight: 1.0 coverage_foreground_weight: 0.5
    objectives {{ name: "cov" initial_weight: 1.0 weight_target: 1.0 }}
    objectives {{ name: "bbox" initial_weight: 1.0 weight_target: 1.0 }} }}''' for c in CLASSES)
    raster = "\n".join(f'''  target_class_config {{ key: "{c}" value {{ cov_center_x: 0.5 cov_center_y: 0.5
    cov_radius_x: 0.5 cov_radius_y: 0.5 bbox_min_radius: 0.6 }} }}''' for c in CLASSES)
    overlap = "\n".join(f'  minimum_detection_ground_truth_overlap {{ key: "{c}" value: 0.5 }}' for c in CLASSES)
    return f'''random_seed: 7
dataset_config {{
  data_sources {{ tfrecords_path: "{tfrecords}" image_directory_path: "{data}" }}
  image_extension: "png"
{per_class}
  validation_fold: 0
}}
augmentation_config {{
  preprocessing {{ output_image_width: {WIDTH} output_image_height: {HEIGHT} output_image_channel: 3 }}
  spatial_augmentation {{ hflip_probability: 0.0 zoom_min: 1.0 zoom_max: 1.0 }}
}}
postprocessing_config {{
{clustering}
}}
model_config {{
  arch: "resnet"
  num_layers: 10
  use_batch_norm: true
{extra_model}
}}
evaluation_config {{
  validation_period_during_training: 1
  first_validation_epoch: 1
{overlap}
  average_precision_mode: INTEGRATE
}}
cost_function_config {{
{targets}
}}
training_config {{
  batch_size_per_gpu: 4
  num_epochs: {epochs}
  learning_rate {{ soft_start_annealing_schedule {{ min_learning_rate: 1e-4 max_learning_rate: 2e-3
    soft_start: 0.1 annealing: 0.8 }} }}
  regularizer {{ type: L2 weight: 1e-5 }}
  optimizer {{ adam {{ epsilon: 1e-8 beta1: 0.9 beta2: 0.999 }} }}
}}
bbox_rasterizer_config {{
{raster}
  deadzone_radius: 0.5
}}
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("detectnet")
    data = root / "kitti"
    _write_kitti(data, 20)
    convert = root / "convert.txt"
    convert.write_text(f'''kitti_config {{ root_directory_path: "{data}" image_dir_name: "images"
  label_dir_name: "labels" image_extension: ".png" partition_mode: "random" num_partitions: 2
  val_split: 25 num_shards: 2 }}
image_directory_path: "{data}"
''')
    taoctl("detectnet_v2", "dataset_convert", "-d", convert, "-o", root / "tfrecords" / "kitti",
           "-r", root / "convert", check=True)
    spec = root / "spec.txt"
    spec.write_text(_spec(data, f"{root}/tfrecords/kitti*", epochs=2))
    result = taoctl("detectnet_v2", "train", "-e", spec, "-r", root / "train", check=True)
    return root, spec, result


def test_train_prints_counts_validates_and_keeps_the_best(trained):
    root, _, result = trained
    assert "Total params:" in result.stdout and "Non-trainable params: 0" in result.stdout
    rows = [json.loads(line) for line in (root / "train" / "status.json").read_text().splitlines()]
    assert rows[-1]["status"] == "SUCCESS"
    assert (root / "train" / "weights" / "model_002.tlt").is_file()
    assert (root / "train" / "weights" / "model_best.tlt").is_file()
    assert "val_mAP" in result.stdout


def test_evaluate_model_file_and_onnx_agree(trained, taoctl):
    root, spec, _ = trained
    model = root / "train" / "weights" / "model_002.tlt"
    first = taoctl("detectnet_v2", "evaluate", "-e", spec, "-m", model, "-r", root / "eval", check=True)
    for line in ("Validation cost:", "Mean average_precision (in %):", "Median Inference Time:"):
        assert line in first.stdout
    taoctl("detectnet_v2", "export", "-m", model, "-o", root / "export" / "model.onnx", "-e", spec,
           "--gen_ds_config", check=True)
    second = taoctl("detectnet_v2", "evaluate", "-e", spec, "-m", root / "export" / "model.onnx",
                    "-r", root / "eval_onnx", check=True)
    ours = json.loads((root / "eval" / "results.json").read_text())
    theirs = json.loads((root / "eval_onnx" / "results.json").read_text())
    assert ours["mAP"] == pytest.approx(theirs["mAP"], abs=1e-6)
    graph = onnx.load(root / "export" / "model.onnx").graph
    assert [o.name for o in graph.output] == ["output_cov/Sigmoid", "output_bbox/BiasAdd"]
    config = (root / "export" / "nvinfer_config.txt").read_text()
    assert "network-type=0" in config and "cluster-mode=2" in config
    assert "output-blob-names=output_cov/Sigmoid;output_bbox/BiasAdd" in config
    assert "net-scale-factor=0.0039215686" in config
    assert (root / "export" / "labels.txt").read_text().split() == list(CLASSES)


def test_inference_writes_labels_and_annotated_images(trained, taoctl):
    root, spec, _ = trained
    out = root / "infer"
    taoctl("detectnet_v2", "inference", "-e", spec, "-m", root / "train" / "weights" / "model_002.tlt",
           "-i", root / "kitti" / "images", "-r", out,
           # Two epochs of 4 steps teach little: a low threshold makes sure boxes come out.
           "postprocessing_config.target_class_config.red.clustering_config.coverage_threshold=0.001", check=True)
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(labels) == 20 and len(list((out / "images_annotated").iterdir())) == 20
    fields = labels[0].read_text().splitlines()[0].split()
    assert fields[0] == "red" and len(fields) == 16  # KITTI plus the confidence
    assert 0.0 < float(fields[15]) <= 1.0


def test_prune_then_retrain_needs_load_graph(trained, taoctl):
    root, spec, _ = trained
    pruned = root / "pruned.tlt"
    result = taoctl("detectnet_v2", "prune", "-m", root / "train" / "weights" / "model_002.tlt", "-o", pruned,
                    "-pth", "0.6", "-eq", "union", check=True)
    assert "Pruned" in result.stdout
    no_graph = root / "retrain_no_graph.txt"
    no_graph.write_text(_spec(root / "kitti", f"{root}/tfrecords/kitti*", 1, f'  pretrained_model_file: "{pruned}"'))
    refused = taoctl("detectnet_v2", "train", "-e", no_graph, "-r", root / "retrain_refused")
    assert refused.returncode == 2 and "load_graph: true" in refused.stderr
    assert "Traceback" not in refused.stderr
    retrain = root / "retrain.txt"
    retrain.write_text(_spec(root / "kitti", f"{root}/tfrecords/kitti*", 1,
                             f'  pretrained_model_file: "{pruned}"\n  load_graph: true'))
    result = taoctl("detectnet_v2", "train", "-e", retrain, "-r", root / "retrain", check=True)
    assert "0 missing" in result.stdout


def test_int8_export_and_calibration_tensorfile(trained, taoctl):
    root, spec, _ = trained
    cal = root / "cal.npy"
    taoctl("detectnet_v2", "calibration_tensorfile", "-e", spec, "-o", cal, "-m", "2", check=True)
    assert np.load(cal).shape == (8, 3, HEIGHT, WIDTH)
    taoctl("detectnet_v2", "export", "-m", root / "train" / "weights" / "model_002.tlt", "-e", spec,
           "-o", root / "int8" / "model.onnx", "--data_type", "int8", "--cal_data_file", cal, "--batches", "2",
           "--batch_size", "4", check=True)
    ops = {node.op_type for node in onnx.load(root / "int8" / "model.onnx").graph.node}
    assert "QuantizeLinear" in ops and "Sigmoid" in ops


def test_qat_trains_and_exports_int8_without_calibration(trained, taoctl):
    root, _, _ = trained
    spec = root / "qat.txt"
    spec.write_text(_spec(root / "kitti", f"{root}/tfrecords/kitti*", 1,
                          f'  pretrained_model_file: "{root}/train/weights/model_002.tlt"').replace(
        "training_config {", "training_config {\n  enable_qat: true"))
    result = taoctl("detectnet_v2", "train", "-e", spec, "-r", root / "qat", check=True)
    assert "Quantization-aware training:" in result.stdout
    model = root / "qat" / "weights" / "model_001.tlt"
    out = root / "qat_export" / "model.onnx"
    result = taoctl("detectnet_v2", "export", "-m", model, "-e", spec, "-o", out, "--data_type", "int8", check=True)
    assert "no calibration data" in result.stdout and "Calibrating" not in result.stdout
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert out.with_suffix(".cal.bin").read_text().startswith("TRT-")
    evaluated = taoctl("detectnet_v2", "evaluate", "-e", spec, "-m", out, "-r", root / "qat_eval", check=True)
    assert "Mean average_precision (in %):" in evaluated.stdout
    # TAO's --force_ptq: the QAT model's float graph calibrated instead of its learned scales
    forced = taoctl("detectnet_v2", "export", "-m", model, "-e", spec, "-o", root / "qat_export" / "ptq.onnx",
                    "--data_type", "int8", "--force_ptq", "--batches", "1", check=True)
    assert "--force_ptq: INT8 scales come from calibrating" in forced.stdout and "Calibrating on" in forced.stdout
    assert "no calibration data" not in forced.stdout
