"""`taoctl deploy <task> gen_trt_engine | evaluate | inference` on a tiny trained classifier and its ONNX.

Without TensorRT (this CI): the one-line refusals, the engine record check, and evaluate/inference of
the .onnx giving exactly the model-side reports. With tensorrt and a CUDA GPU: an engine is built and
evaluated to the same confusion matrix.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from taoctl.engine import deploy
from taoctl.errors import TaoctlError

SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ adam {{ lr: 0.003 }} }}
  lr_config {{ step {{ learning_rate: 0.003 step_size: 50 gamma: 0.5 }} }}
  batch_size_per_gpu: 8
  n_epochs: 1
  n_workers: 0
  preprocess_mode: "tf"
}}
eval_config {{ eval_dataset_path: "{data}/val" top_k: 2 batch_size: 4 }}
"""
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def _has_tensorrt_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, taoctl):
    """A classifier trained one epoch on generated colour images, exported to ONNX with its classmap.json."""
    root = tmp_path_factory.mktemp("deploy")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for name, colour in COLOURS.items():
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(-30, 30, (32, 32, 3))
                Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    spec = root / "spec.txt"
    spec.write_text(SPEC.format(data=root / "data"))
    taoctl("classification", "train", "-e", str(spec), "-r", str(root / "run"), check=True)
    onnx_path = root / "export" / "model.onnx"
    taoctl("classification", "export", "-m", str(root / "run" / "weights" / "resnet_001.tlt"), "-o", str(onnx_path),
           "-e", str(spec), check=True)
    return root, spec, onnx_path


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("taoctl:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_deploy_group_lists_actions_and_refuses_unknown_ones(taoctl):
    listed = taoctl("deploy", "classification_tf1", check=True)
    assert all(action in listed.stdout for action in ("gen_trt_engine", "evaluate", "inference"))
    assert "did you mean \"gen_trt_engine\"" in _one_error_line(taoctl("deploy", "classification", "gen_trt_engin"))
    assert 'unknown task or command "yolo_v4"' in taoctl("deploy", "yolo_v4", "evaluate").stderr
    assert "--max_workspace_size" in taoctl("deploy", "detectnet_v2", "gen_trt_engine", "--help", check=True).stdout
    # the deploy actions are not model subtasks
    assert "gen_trt_engine" not in taoctl("model", "classification", check=True).stdout


def test_onnx_evaluate_and_inference_match_the_model_side_reports(exported, taoctl):
    root, spec, onnx_path = exported
    taoctl("classification", "evaluate", "-e", str(spec), "-m", str(onnx_path), "-r", str(root / "e_model"),
           check=True)
    result = taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m", str(onnx_path),
                    "-r", str(root / "e_deploy"), check=True)
    timing = ("seconds", "images_per_second")  # the only values that may differ between two runs
    model_report, deploy_report = ({k: v for k, v in json.loads((root / out / "results.json").read_text()).items()
                                    if k not in timing} for out in ("e_model", "e_deploy"))
    assert deploy_report == model_report and deploy_report["num_images"] == 9 and "confusion_matrix" in model_report
    assert "top-1 accuracy" in result.stdout
    assert json.loads((root / "e_deploy" / "status.json").read_text().splitlines()[-1])["status"] == "SUCCESS"

    images = root / "data" / "val"
    taoctl("classification", "inference", "-e", str(spec), "-m", str(onnx_path), "-cm",
           str(onnx_path.with_name("classmap.json")), "-d", str(images), "-r", str(root / "i_model"), check=True)
    taoctl("deploy", "classification", "inference", "-e", str(spec), "-m", str(onnx_path), "-i", str(images),
           "-r", str(root / "i_deploy"), check=True)
    model_rows = (root / "i_model" / "result.csv").read_text()
    assert (root / "i_deploy" / "result.csv").read_text() == model_rows and len(model_rows.splitlines()) == 9


def test_a_model_file_is_refused_in_one_line(exported, taoctl):
    root, spec, _ = exported
    line = _one_error_line(taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m",
                                  str(root / "run" / "weights" / "resnet_001.tlt")))
    assert "takes a TensorRT engine" in line and "taoctl model classification evaluate" in line


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_without_tensorrt_gen_trt_engine_and_engine_evaluate_say_so_in_one_line(exported, tmp_path, taoctl):
    root, spec, onnx_path = exported
    engine = tmp_path / "model.engine"
    line = _one_error_line(taoctl("deploy", "classification", "gen_trt_engine", "-m", str(onnx_path),
                                  "--engine_file", str(engine), "--max_batch_size", "8"))
    assert line == f"taoctl: {deploy.NO_TENSORRT}" and not engine.exists()
    engine.write_bytes(b"an engine built elsewhere")
    line = _one_error_line(taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m", str(engine)))
    assert line == f"taoctl: {deploy.NO_TENSORRT}"


def test_batch_profile_comes_from_the_onnx_and_the_batch_flags(exported):
    _, _, onnx_path = exported
    assert deploy.engine_profile(onnx_path, max_batch_size=16) == {
        "input_1": ((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))}
    assert not deploy.is_quantized(onnx_path)
    with pytest.raises(TaoctlError, match="--min_batch_size"):
        deploy.engine_profile(onnx_path, max_batch_size=4, min_batch_size=8)


RECORD = {"format": deploy.RECORD_FORMAT, "tensorrt_version": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3",
          "compute_capability": "9.0", "data_type": "fp16"}


def test_engine_record_check_refuses_another_tensorrt_or_gpu_architecture():
    here = deploy.Platform("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert deploy.check_engine_record("m.engine", RECORD, here) is None
    with pytest.raises(TaoctlError) as refused:
        deploy.check_engine_record("m.engine", RECORD, deploy.Platform("10.7.0", "NVIDIA H100 80GB HBM3", "9.0"))
    assert "\n" not in str(refused.value) and "TensorRT 10.3.0" in str(refused.value)
    assert "TensorRT 10.7.0" in str(refused.value) and "rebuild it here" in str(refused.value)
    with pytest.raises(TaoctlError, match=r"compute 9.0\); this machine has .* NVIDIA A100 .*compute 8.0"):
        deploy.check_engine_record("m.engine", RECORD, deploy.Platform("10.3.0", "NVIDIA A100", "8.0"))
    warning = deploy.check_engine_record("m.engine", RECORD, deploy.Platform("10.3.0", "NVIDIA H100 PCIe", "9.0"))
    assert warning.startswith("Warning:") and "NVIDIA H100 PCIe" in warning
    with pytest.raises(TaoctlError, match="not a taoctl engine record"):
        deploy.check_engine_record("m.engine", {"gpu": "x"}, here)


@pytest.mark.skipif(not _has_tensorrt_gpu(), reason="needs tensorrt and a CUDA GPU")
def test_engine_is_built_recorded_and_evaluates_as_the_onnx(exported, taoctl):
    root, spec, onnx_path = exported
    engine = root / "export" / "model.fp16.engine"
    taoctl("deploy", "classification", "gen_trt_engine", "-m", str(onnx_path), "-e", str(spec), "--data_type",
           "fp16", "--engine_file", str(engine), "--max_batch_size", "4", check=True)
    record = json.loads(deploy.record_path(engine).read_text())
    assert record["data_type"] == "fp16" and record["outputs"] == ["predictions/Softmax"]
    assert record["inputs"]["input_1"][2] == [4, 3, 32, 32]
    taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m", str(engine), "-r", str(root / "e_trt"),
           check=True)
    taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m", str(onnx_path), "-r", str(root / "e_onnx"),
           check=True)
    trt_report = json.loads((root / "e_trt" / "results.json").read_text())
    onnx_report = json.loads((root / "e_onnx" / "results.json").read_text())
    assert trt_report["confusion_matrix"] == onnx_report["confusion_matrix"]
    assert abs(trt_report["loss"] - onnx_report["loss"]) < 1e-2
    int8 = root / "export" / "model.int8.engine"
    built = taoctl("deploy", "classification", "gen_trt_engine", "-m", str(onnx_path), "-e", str(spec),
                   "--data_type", "int8", "--engine_file", str(int8), "--batch_size", "3", "--batches", "2",
                   check=True)
    assert "Calibrating" in built.stdout and int8.with_suffix(".cal.bin").exists()
    stale = dict(record, tensorrt_version="0.0.1")
    deploy.record_path(engine).write_text(json.dumps(stale))
    line = _one_error_line(taoctl("deploy", "classification", "evaluate", "-e", str(spec), "-m", str(engine)))
    assert "built with TensorRT 0.0.1" in line


def test_int8_of_an_fp32_onnx_calibrates_on_the_spec_data_into_explicit_scales(exported, tmp_path):
    from taoctl.engine.export import quantize_int8
    from taoctl.engine.task import Run
    from taoctl.tasks.classification import spec as classification_spec
    from taoctl.tasks.classification.task import TASK

    root, spec, onnx_path = exported
    cal_file = tmp_path / "cal.npy"
    run = Run(subtask="gen_trt_engine", flags={"batch_size": 3, "batches": 2, "cal_data_file": str(cal_file)},
              spec_path=str(spec), spec=classification_spec.load(str(spec)))
    batches = deploy.calibration_batches(TASK, run, onnx_path)
    assert [b["input_1"].shape for b in batches] == [(3, 3, 32, 32)] * 2 and batches[0]["input_1"].dtype == np.float32
    assert np.load(cal_file).shape == (6, 3, 32, 32)  # the sampled images are saved for the next build
    again = deploy.calibration_batches(TASK, run, onnx_path)  # ... and read back instead of the folder
    assert all(np.array_equal(a["input_1"], b["input_1"]) for a, b in zip(again, batches))
    int8_path = tmp_path / "int8.onnx"
    quantize_int8(onnx_path, int8_path, batches)
    assert deploy.is_quantized(int8_path)
    run.spec = None
    with pytest.raises(TaoctlError, match="pass -e"):
        deploy.calibration_batches(TASK, run, onnx_path)
